#include "lib/nbd/transmission_flags.h"

#include <gtest/gtest.h>

#include "lib/nbd/wire.h"

namespace nbdmgr::nbd {
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

TEST(TransmissionFlagsTest, FromCapsAndReadOnly) {
  auto rw = Mem("rw");
  uint16_t f = TransmissionFlags(*rw, true);
  EXPECT_TRUE(f & kTxSendFua);
  EXPECT_TRUE(f & kTxSendTrim);
  EXPECT_TRUE(f & kTxSendWriteZeroes);
  EXPECT_TRUE(f & kTxSendFastZero);
  EXPECT_TRUE(f & kTxSendDf);
  EXPECT_FALSE(TransmissionFlags(*rw, false) & kTxSendDf);
  auto ro = Mem("ro", true);
  uint16_t g = TransmissionFlags(*ro, false);
  EXPECT_TRUE(g & kTxReadOnly);
  EXPECT_FALSE(g & (kTxSendFua | kTxSendTrim | kTxSendWriteZeroes));
}

}  // namespace
}  // namespace nbdmgr::nbd
