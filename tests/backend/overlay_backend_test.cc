#include "lib/backend/overlay_backend.h"

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/backend/memory_backend.h"

namespace nbdmgr {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kSize = 8 * kMiB + 12 * kKiB;  // a partial last cluster

class OverlayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/nbdmgr-overlay-XXXXXX";
    dir_ = mkdtemp(tmpl);
    auto mem = MemoryBackend::Create(kSize);
    ASSERT_TRUE(mem.ok());
    base_ = std::shared_ptr<Backend>(std::move(*mem));
    // The base: a pattern nobody could confuse with zeroes or new data.
    model_.resize(kSize);
    for (uint64_t i = 0; i < kSize; ++i)
      model_[i] = static_cast<uint8_t>(i * 7 + 3);
    ASSERT_TRUE(base_->Write(0, model_, false).ok());
    base_copy_ = model_;
    Reopen();
  }
  void TearDown() override {
    ov_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Reopen(uint32_t cluster = 64 * kKiB) {
    ov_.reset();
    OverlayOptions o;
    o.file.path = dir_ + "/vm.ovl";
    o.cluster_size = cluster;
    o.base_name = "golden";
    auto r = OverlayBackend::Open(o, base_);
    ASSERT_TRUE(r.ok()) << r.status();
    ov_ = std::move(*r);
  }
  std::vector<uint8_t> ReadAll() {
    std::vector<uint8_t> out(kSize);
    EXPECT_TRUE(ov_->Read(0, out).ok());
    return out;
  }
  void Write(uint64_t off, uint64_t len, uint8_t seed, bool fua = false) {
    std::vector<uint8_t> d(len);
    for (uint64_t i = 0; i < len; ++i) d[i] = static_cast<uint8_t>(seed + i);
    ASSERT_TRUE(ov_->Write(off, d, fua).ok());
    std::copy(d.begin(), d.end(), model_.begin() + off);
  }
  void Zero(uint64_t off, uint64_t len) {
    ASSERT_TRUE(ov_->Trim(off, len, false).ok());
    std::fill(model_.begin() + off, model_.begin() + off + len, 0);
  }

  std::string dir_;
  std::shared_ptr<Backend> base_;
  std::unique_ptr<OverlayBackend> ov_;
  std::vector<uint8_t> model_, base_copy_;
};

TEST_F(OverlayTest, ReadsTheBaseUntilWrittenAndNeverWritesIt) {
  EXPECT_EQ(ReadAll(), model_);
  Write(100, 10, 1);                 // partial: a copy-up
  Write(64 * kKiB, 64 * kKiB, 2);    // a whole cluster: none
  Write(kSize - 100, 100, 3);        // in the partial last cluster
  Write(3 * kMiB - 5, 4 * kKiB, 4);  // across a boundary
  EXPECT_EQ(ReadAll(), model_);
  std::vector<uint8_t> base(kSize);
  ASSERT_TRUE(base_->Read(0, base).ok());
  EXPECT_EQ(base, base_copy_);
  EXPECT_EQ(ov_->stats().copy_ups, 4u);  // 100, last, and the two across
  EXPECT_EQ(ov_->stats().allocated_bytes, 5 * 64 * kKiB);
}

TEST_F(OverlayTest, TrimAndZeroHideTheBase) {
  Zero(0, 64 * kKiB);           // whole cluster: state only
  Zero(200 * kKiB, 10 * kKiB);  // partial: zeroes written
  ZeroOptions no_hole;
  no_hole.may_trim = false;
  ASSERT_TRUE(ov_->Zero(kMiB, 128 * kKiB, no_hole).ok());
  std::fill(model_.begin() + kMiB, model_.begin() + kMiB + 128 * kKiB, 0);
  EXPECT_EQ(ReadAll(), model_);
  std::vector<std::pair<uint64_t, uint32_t>> ext;
  ASSERT_TRUE(ov_->Extents(0, 2 * kMiB,
                           [&](Extent e) {
                             ext.emplace_back(e.length, e.flags);
                             return true;
                           })
                  .ok());
  ASSERT_FALSE(ext.empty());
  EXPECT_EQ(ext[0], std::make_pair(64 * kKiB, kExtentHole | kExtentZero));
  uint64_t total = 0;
  for (auto& [len, f] : ext) total += len;
  EXPECT_EQ(total, 2 * kMiB);
  // FAST_ZERO: whole clusters are fast; a partial one is not.
  ZeroOptions fast;
  fast.fast = true;
  EXPECT_TRUE(ov_->Zero(2 * kMiB, 64 * kKiB, fast).ok());
  EXPECT_EQ(ov_->Zero(2 * kMiB + 512, 512, fast).code(),
            absl::StatusCode::kUnimplemented);
}

TEST_F(OverlayTest, NoHoleZeroesAreKnownZeroAndNeverHideData) {
  ZeroOptions no_hole;
  no_hole.may_trim = false;
  // Whole clusters: allocated zeroes in the overlay file (ext4 and XFS list
  // them as unwritten extents: zero, not a hole; elsewhere zeroes written
  // as data, which is honest too).
  ASSERT_TRUE(ov_->Zero(kMiB, 256 * kKiB, no_hole).ok());
  std::fill(model_.begin() + kMiB, model_.begin() + kMiB + 256 * kKiB, 0);
  Write(kMiB + 64 * kKiB + 100, 50, 9);            // data into a zeroed cluster
  std::vector<std::pair<uint64_t, uint32_t>> ext;  // start, flags
  uint64_t pos = 0;
  ASSERT_TRUE(ov_->Extents(0, kSize,
                           [&](Extent e) {
                             ext.emplace_back(pos, e.flags);
                             pos += e.length;
                             return true;
                           })
                  .ok());
  ASSERT_EQ(pos, kSize);
  auto flags_at = [&](uint64_t at) {
    uint32_t f = 0xff;
    for (const auto& [start, flags] : ext) {
      if (start <= at) f = flags;
    }
    return f;
  };
  EXPECT_EQ(flags_at(0), 0u);  // the base's data
  EXPECT_EQ(flags_at(kMiB + 64 * kKiB + 120), 0u);
  EXPECT_EQ(flags_at(kMiB) & kExtentHole, 0u);  // the overlay's own
  EXPECT_EQ(flags_at(kMiB + 200 * kKiB) & kExtentHole, 0u);
  // Every range reported zero reads as zeroes.
  std::vector<uint8_t> all = ReadAll();
  EXPECT_EQ(all, model_);
  for (size_t i = 0; i < ext.size(); ++i) {
    if (!(ext[i].second & kExtentZero)) continue;
    const uint64_t end = i + 1 < ext.size() ? ext[i + 1].first : kSize;
    for (uint64_t b = ext[i].first; b < end; ++b) ASSERT_EQ(all[b], 0) << b;
  }
}

TEST_F(OverlayTest, CacheCoversEveryKindOfRun) {
  EXPECT_TRUE(ov_->caps().can_cache);
  Write(0, 64 * kKiB, 1);
  Zero(128 * kKiB, 64 * kKiB);
  EXPECT_TRUE(ov_->Cache(0, kSize).ok());
  EXPECT_EQ(ReadAll(), model_);
}

TEST_F(OverlayTest, RandomOperationsMatchAModelAcrossFlushedReopens) {
  std::mt19937_64 rng(42);
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 200; ++i) {
      const uint64_t off = rng() % (kSize - 1);
      const uint64_t len =
          1 + rng() % std::min<uint64_t>(kSize - off, 300 * kKiB);
      if (rng() % 4 == 0) {
        Zero(off, len);
      } else {
        Write(off, len, static_cast<uint8_t>(rng()));
      }
    }
    ASSERT_EQ(ReadAll(), model_) << "round " << round;
    ASSERT_TRUE(ov_->Flush().ok());
    Reopen(0);  // an existing overlay keeps its cluster size
    ASSERT_EQ(ReadAll(), model_) << "after reopen, round " << round;
  }
}

TEST_F(OverlayTest, UnflushedAllocationsReadTheBaseAfterACrash) {
  Write(0, 4 * kKiB, 1, /*fua=*/true);  // durable
  Write(kMiB, 4 * kKiB, 2);             // then one that was never flushed
  // A crash: the backend goes away without a flush.
  auto expected = base_copy_;
  std::copy(model_.begin(), model_.begin() + 4 * kKiB, expected.begin());
  Reopen();
  EXPECT_EQ(ReadAll(), expected);
}

TEST_F(OverlayTest, ResetAndCommit) {
  Write(5 * kMiB, 100 * kKiB, 9);
  Zero(0, 128 * kKiB);
  uint64_t reset_changed = 0;
  ASSERT_TRUE(
      ov_->Reset([&](uint64_t, uint64_t len) { reset_changed += len; }).ok());
  EXPECT_EQ(reset_changed, 4 * 64 * kKiB);
  EXPECT_EQ(ReadAll(), base_copy_);
  EXPECT_EQ(ov_->stats().allocated_bytes, 0u);
  Reopen();
  EXPECT_EQ(ReadAll(), base_copy_);  // durable
  model_ = base_copy_;
  Write(5 * kMiB, 100 * kKiB, 9);
  Zero(0, 128 * kKiB);
  uint64_t changed = 0;
  ASSERT_TRUE(
      ov_->Commit([&](uint64_t, uint64_t len) { changed += len; }).ok());
  EXPECT_EQ(changed, 2 * 64 * kKiB + 2 * 64 * kKiB);  // 100 KiB spans 2
  std::vector<uint8_t> base(kSize);
  ASSERT_TRUE(base_->Read(0, base).ok());
  EXPECT_EQ(base, model_);
  EXPECT_EQ(ReadAll(), model_);
  EXPECT_EQ(ov_->stats().allocated_bytes + ov_->stats().zero_bytes, 0u);
}

TEST_F(OverlayTest, ConcurrentPartialWritesToOneClusterAllLand) {
  // Eight threads each write their own 512 bytes of the same clusters:
  // copy-ups must not undo each other.
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint8_t> d(512, static_cast<uint8_t>(0xA0 + t));
      for (uint64_t c = 0; c < 32; ++c) {
        ASSERT_TRUE(ov_->Write(c * 64 * kKiB + t * 512, d, false).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int t = 0; t < 8; ++t) {
    for (uint64_t c = 0; c < 32; ++c) {
      std::fill_n(model_.begin() + c * 64 * kKiB + t * 512, 512,
                  static_cast<uint8_t>(0xA0 + t));
    }
  }
  EXPECT_EQ(ReadAll(), model_);
}

TEST_F(OverlayTest, BadFilesAreRefusedWithClearErrors) {
  ASSERT_TRUE(ov_->Flush().ok());
  ov_.reset();
  OverlayOptions o;
  o.file.path = dir_ + "/vm.ovl";
  o.cluster_size = 1000;
  EXPECT_EQ(OverlayBackend::Open(o, base_).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Another base size.
  auto other = MemoryBackend::Create(kSize * 2);
  o.cluster_size = 0;
  absl::Status st = OverlayBackend::Open(o, std::move(*other)).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("base of"));
  // A flipped header byte, a bad map byte.
  for (uint64_t at :
       {uint64_t{3}, uint64_t{13}, uint64_t{30}, uint64_t{4096 + 7}}) {
    {
      std::fstream f(o.file.path,
                     std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(at);
      f.put(static_cast<char>(0x77));
    }
    EXPECT_EQ(OverlayBackend::Open(o, base_).status().code(),
              absl::StatusCode::kDataLoss)
        << "byte " << at;
    std::filesystem::remove(o.file.path);
    o.cluster_size = 64 * kKiB;
    auto fresh = OverlayBackend::Open(o, base_);
    ASSERT_TRUE(fresh.ok());
    fresh->reset();
    o.cluster_size = 0;
  }
  // Not an overlay at all.
  std::ofstream(dir_ + "/junk.ovl") << std::string(8192, 'x');
  o.file.path = dir_ + "/junk.ovl";
  EXPECT_EQ(OverlayBackend::Open(o, base_).status().code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace nbdmgr
