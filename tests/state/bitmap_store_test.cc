#include "lib/state/bitmap_store.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nbdmgr {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kSize = 64 * 1024 * 1024;

class BitmapStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/nbdmgr-bitmaps-XXXXXX";
    dir_ = mkdtemp(tmpl);
    store_ = std::make_unique<BitmapStore>(dir_ + "/bitmaps");
    ASSERT_TRUE(set_.Add("daily", 0).ok());
    ASSERT_TRUE(set_.Add("coarse", 1 << 20).ok());
    set_.Mark(5 << 20, 4096);
    ASSERT_TRUE(set_.Checkpoint("daily", "next", 0).ok());
    set_.Mark(9 << 20, 1);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Read() {
    std::ifstream in(store_->PathOf("vm1"), std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  void Write(const std::string& data) {
    std::ofstream out(store_->PathOf("vm1"),
                      std::ios::binary | std::ios::trunc);
    out << data;
  }
  std::map<std::string, BitmapRecord> Load(
      const std::optional<std::string>& id) {
    auto r = store_->Load("vm1", kSize, id);
    EXPECT_TRUE(r.ok()) << r.status();
    std::map<std::string, BitmapRecord> out;
    if (r.ok()) {
      for (auto& rec : *r) out[rec.name] = rec;
    }
    return out;
  }

  std::string dir_;
  std::unique_ptr<BitmapStore> store_;
  BitmapSet set_{kSize};
};

TEST_F(BitmapStoreTest, CleanSaveComesBackWithItsBits) {
  ASSERT_TRUE(store_->SaveClean("vm1", set_.Records(), "id-1").ok());
  struct stat st;
  ASSERT_EQ(::stat((dir_ + "/bitmaps").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  auto got = Load("id-1");
  ASSERT_EQ(got.size(), 3u);
  BitmapSet restored(kSize);
  std::vector<BitmapRecord> records;
  for (auto& [n, r] : got) records.push_back(r);
  restored.Restore(records);
  for (const BitmapInfo& b : set_.List()) {
    absl::StatusOr<BitmapInfo> r = restored.Get(b.name);
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r->consistent) << b.name << ": " << r->inconsistent_reason;
    EXPECT_EQ(r->active, b.active) << b.name;
    EXPECT_EQ(r->granularity, b.granularity) << b.name;
    EXPECT_EQ(r->dirty_bytes, b.dirty_bytes) << b.name;
  }
  EXPECT_FALSE(restored.Get("daily")->active);
}

TEST_F(BitmapStoreTest, InUseOrChangedFileComesBackInconsistent) {
  ASSERT_TRUE(store_->SaveInUse("vm1", set_.Records()).ok());
  for (auto& [n, r] : Load("id-1")) {
    EXPECT_FALSE(r.consistent) << n;
    EXPECT_EQ(r.bits, nullptr);
    EXPECT_THAT(r.inconsistent_reason, HasSubstr("did not stop cleanly"));
  }
  ASSERT_TRUE(store_->SaveClean("vm1", set_.Records(), "id-1").ok());
  for (auto& [n, r] : Load("id-2")) {
    EXPECT_FALSE(r.consistent) << n;
    EXPECT_THAT(r.inconsistent_reason, HasSubstr("changed"));
  }
  for (auto& [n, r] : Load(std::nullopt)) {
    EXPECT_FALSE(r.consistent) << n;
    EXPECT_THAT(r.inconsistent_reason, HasSubstr("not kept"));
  }
  // Saved clean without an identity (a memory export): not kept.
  ASSERT_TRUE(store_->SaveClean("vm1", set_.Records(), std::nullopt).ok());
  for (auto& [n, r] : Load("id-1")) {
    EXPECT_FALSE(r.consistent) << n;
    EXPECT_THAT(r.inconsistent_reason, HasSubstr("not kept"));
  }
  // Another size: the bits do not line up.
  ASSERT_TRUE(store_->SaveClean("vm1", set_.Records(), "id-1").ok());
  auto other = store_->Load("vm1", kSize * 2, "id-1");
  ASSERT_TRUE(other.ok());
  for (auto& r : *other) EXPECT_FALSE(r.consistent) << r.name;
}

TEST_F(BitmapStoreTest, EveryFlippedByteIsDataLossNeverACrashOrTrust) {
  ASSERT_TRUE(store_->SaveClean("vm1", set_.Records(), "id-1").ok());
  const std::string good = Read();
  // Every byte of the header region and a sample of the rest.
  for (size_t i = 0; i < good.size(); i += (i < 512 ? 1 : 997)) {
    std::string bad = good;
    bad[i] ^= 0x40;
    Write(bad);
    auto r = store_->Load("vm1", kSize, "id-1");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << "byte " << i;
  }
  for (size_t len :
       {size_t{0}, size_t{5}, size_t{12}, good.size() / 2, good.size() - 1}) {
    Write(good.substr(0, len));
    EXPECT_EQ(store_->Load("vm1", kSize, "id-1").status().code(),
              absl::StatusCode::kDataLoss)
        << "length " << len;
  }
  ASSERT_TRUE(store_->SetAside("vm1").ok());
  EXPECT_TRUE(std::filesystem::exists(store_->PathOf("vm1") + ".corrupt"));
  EXPECT_TRUE(Load("id-1").empty());
}

TEST_F(BitmapStoreTest, RemoveAndEmptySetLeaveNoFile) {
  ASSERT_TRUE(store_->SaveInUse("vm1", set_.Records()).ok());
  EXPECT_TRUE(std::filesystem::exists(store_->PathOf("vm1")));
  ASSERT_TRUE(store_->SaveInUse("vm1", {}).ok());
  EXPECT_FALSE(std::filesystem::exists(store_->PathOf("vm1")));
  ASSERT_TRUE(store_->Remove("vm1").ok());  // none: still OK
  EXPECT_TRUE(Load("id-1").empty());
}

}  // namespace
}  // namespace nbdmgr
