#include "lib/export/export_registry.h"

#include <gtest/gtest.h>

#include "lib/nbd/wire.h"

namespace nbdmgr {
namespace {

std::shared_ptr<Export> Mem(const std::string& name, bool ro = false) {
  ExportConfig c;
  c.name = name;
  c.backend = BackendKind::kMemory;
  c.size = 1 << 20;
  c.read_only = ro;
  static BufferSystem buffers(32 << 20);
  return *Export::Create(c, buffers);
}

TEST(ExportRegistryTest, AddFindRemove) {
  ExportRegistry r;
  ASSERT_TRUE(r.Add(Mem("b")).ok());
  ASSERT_TRUE(r.Add(Mem("a")).ok());
  EXPECT_EQ(r.Add(Mem("a")).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(r.Find("a"), nullptr);
  EXPECT_EQ(r.Find("zzz"), nullptr);
  auto list = r.List();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0]->name(), "a");
  auto removed = r.Remove("a");
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ((*removed)->name(), "a");
  EXPECT_EQ(r.Remove("a").status().code(), absl::StatusCode::kNotFound);
}

TEST(ExportRegistryTest, EmptyNameIsDefault) {
  ExportRegistry r;
  ASSERT_TRUE(r.Add(Mem("a")).ok());
  EXPECT_EQ(r.Find(""), nullptr);
  r.SetDefault("a");
  ASSERT_NE(r.Find(""), nullptr);
  EXPECT_EQ(r.Find("")->name(), "a");
}

TEST(ExportTest, TransmissionFlags) {
  auto rw = Mem("rw");
  uint16_t f = rw->TransmissionFlags(true);
  EXPECT_TRUE(f & nbd::kTxSendFua);
  EXPECT_TRUE(f & nbd::kTxSendTrim);
  EXPECT_TRUE(f & nbd::kTxSendWriteZeroes);
  EXPECT_TRUE(f & nbd::kTxSendFastZero);
  EXPECT_TRUE(f & nbd::kTxSendDf);
  EXPECT_FALSE(rw->TransmissionFlags(false) & nbd::kTxSendDf);
  auto ro = Mem("ro", true);
  uint16_t g = ro->TransmissionFlags(false);
  EXPECT_TRUE(g & nbd::kTxReadOnly);
  EXPECT_FALSE(g &
               (nbd::kTxSendFua | nbd::kTxSendTrim | nbd::kTxSendWriteZeroes));
}

}  // namespace
}  // namespace nbdmgr
