#include "lib/export/bitmap_set.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nbdmgr {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1024 * 1024;

bool Dirty(const DirtyBitmap& b, uint64_t offset) {
  bool dirty = false;
  b.Extents(offset, 1, [&](uint64_t, bool d) {
    dirty = d;
    return false;
  });
  return dirty;
}

TEST(BitmapSetTest, AddValidatesAndMarksEveryActiveBitmap) {
  BitmapSet set(64 * kMiB);
  EXPECT_EQ(set.Add("daily", 0)->granularity, BitmapSet::kDefaultGranularity);
  EXPECT_TRUE(set.Add("big", kMiB).ok());
  EXPECT_EQ(set.Add("daily", 0).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(set.Add("-x", 0).status().message(), HasSubstr("\"-x\""));
  EXPECT_EQ(set.Add("a/b", 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(set.Add(std::string(129, 'a'), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(set.Add("odd", 1000).status().code(),
            absl::StatusCode::kInvalidArgument);
  set.Mark(3 * kMiB + 10, 1);
  EXPECT_EQ(set.Get("daily")->dirty_bytes, 64u * 1024);
  EXPECT_EQ(set.Get("big")->dirty_bytes, kMiB);
  ASSERT_TRUE(set.Remove("big").ok());
  EXPECT_EQ(set.Remove("big").code(), absl::StatusCode::kNotFound);
  set.Mark(0, 1);
  EXPECT_EQ(set.Get("daily")->dirty_bytes, 2u * 64 * 1024);
}

TEST(BitmapSetTest, CountAndMemoryAreCapped) {
  // 1 PiB at 512 B would take 256 GiB of bits: refused before allocating.
  BitmapSet huge(uint64_t{1} << 50);
  absl::StatusOr<BitmapInfo> r = huge.Add("fine", 512);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("larger granularity"));
  BitmapSet set(kMiB);
  for (size_t i = 0; i < BitmapSet::kMaxBitmaps; ++i) {
    ASSERT_TRUE(set.Add("b" + std::to_string(i), 0).ok());
  }
  EXPECT_EQ(set.Add("one-more", 0).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(BitmapSetTest, CheckpointFreezesOldAndStartsNew) {
  BitmapSet set(16 * kMiB);
  ASSERT_TRUE(set.Add("epoch1", 0).ok());
  set.Mark(0, 1);
  auto r = set.Checkpoint("epoch1", "epoch2", 0);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->first.active);
  EXPECT_TRUE(r->second.active);
  EXPECT_EQ(r->second.granularity, r->first.granularity);
  set.Mark(kMiB, 1);
  std::shared_ptr<const DirtyBitmap> e1 = set.Find("epoch1");
  std::shared_ptr<const DirtyBitmap> e2 = set.Find("epoch2");
  EXPECT_TRUE(Dirty(*e1, 0));
  EXPECT_FALSE(Dirty(*e1, kMiB));  // frozen: no longer marked
  EXPECT_FALSE(Dirty(*e2, 0));
  EXPECT_TRUE(Dirty(*e2, kMiB));
  // Nothing changes on an error.
  EXPECT_EQ(set.Checkpoint("epoch1", "epoch3", 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(set.Checkpoint("epoch2", "epoch1", 0).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(set.Checkpoint("nope", "epoch3", 0).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(set.List().size(), 2u);
  EXPECT_TRUE(set.Get("epoch2")->active);
}

// Writers mark while checkpoints rotate the bitmaps: every mark lands in
// exactly one epoch, none is lost between a freeze and the next start.
TEST(BitmapSetTest, CheckpointWhileMarkingLosesNoWrite) {
  constexpr uint64_t kBlock = 64 * 1024;
  constexpr uint64_t kBlocks = 4096;
  BitmapSet set(kBlocks * kBlock);
  ASSERT_TRUE(set.Add("e0", 0).ok());
  std::atomic<uint64_t> next{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&] {
      for (uint64_t b; (b = next.fetch_add(1)) < kBlocks;) {
        set.Mark(b * kBlock, 1);
      }
    });
  }
  int epochs = 1;
  while (next.load() < kBlocks && epochs < 30) {
    ASSERT_TRUE(set.Checkpoint("e" + std::to_string(epochs - 1),
                               "e" + std::to_string(epochs), 0)
                    .ok());
    ++epochs;
  }
  for (auto& w : writers) w.join();
  for (uint64_t b = 0; b < kBlocks; ++b) {
    int in = 0;
    for (int e = 0; e < epochs; ++e) {
      in += Dirty(*set.Find("e" + std::to_string(e)), b * kBlock);
    }
    ASSERT_EQ(in, 1) << "block " << b;  // exactly one epoch holds it
  }
}

TEST(BitmapSetTest, InconsistentIsHiddenUntilCleared) {
  BitmapSet set(8 * kMiB);
  ASSERT_TRUE(set.Add("ok", 0).ok());
  std::vector<BitmapRecord> records = set.Records();
  BitmapRecord broken;
  broken.name = "crashed";
  broken.granularity = 65536;
  broken.consistent = false;
  broken.inconsistent_reason = "crash";
  records.push_back(broken);
  set.Restore(records);
  EXPECT_EQ(set.Find("crashed"), nullptr);
  EXPECT_TRUE(set.Has("crashed"));
  EXPECT_EQ(set.ConsistentNames(), std::vector<std::string>{"ok"});
  EXPECT_FALSE(set.Get("crashed")->consistent);
  EXPECT_EQ(set.Get("crashed")->inconsistent_reason, "crash");
  // An inconsistent active bitmap may be frozen by a checkpoint; the new
  // one is consistent.
  auto r = set.Checkpoint("crashed", "fresh", 0);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->first.consistent);
  EXPECT_TRUE(r->second.consistent);
  ASSERT_TRUE(set.Clear("crashed").ok());
  EXPECT_NE(set.Find("crashed"), nullptr);
  EXPECT_EQ(set.Get("crashed")->dirty_bytes, 0u);
}

TEST(BitmapSetTest, AChangeThatCannotBeSavedChangesNothing) {
  BitmapSet set(16 * kMiB);
  ASSERT_TRUE(set.Add("a", 0).ok());
  set.Mark(0, 1);
  std::vector<BitmapRecord> saw;
  auto full = [&](const std::vector<BitmapRecord>& r) {
    saw = r;
    return absl::ResourceExhaustedError("disk full");
  };
  EXPECT_EQ(set.Clear("a", full).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(set.Get("a")->dirty_bytes, 64u * 1024);
  EXPECT_FALSE(set.Checkpoint("a", "b", 0, full).ok());
  ASSERT_EQ(saw.size(), 2u);  // what it would have saved: a frozen, b new
  EXPECT_FALSE(saw[0].active);
  EXPECT_TRUE(set.Get("a")->active);
  EXPECT_FALSE(set.Has("b"));
  EXPECT_FALSE(set.Remove("a", full).ok());
  EXPECT_FALSE(set.Add("c", 0, full).ok());
  EXPECT_EQ(set.List().size(), 1u);
  // Still marking into "a".
  set.Mark(kMiB, 1);
  EXPECT_EQ(set.Get("a")->dirty_bytes, 2u * 64 * 1024);
}

TEST(BitmapSetTest, ClearingAFrozenBitmapMakesItRecordAgain) {
  BitmapSet set(16 * kMiB);
  ASSERT_TRUE(set.Add("a", 0).ok());
  ASSERT_TRUE(set.Checkpoint("a", "b", 0).ok());
  set.Mark(0, 1);
  EXPECT_EQ(set.Get("a")->dirty_bytes, 0u);
  absl::StatusOr<BitmapInfo> cleared = set.Clear("a");
  ASSERT_TRUE(cleared.ok());
  EXPECT_TRUE(cleared->active);
  set.Mark(kMiB, 1);
  EXPECT_EQ(set.Get("a")->dirty_bytes, 64u * 1024);
}

TEST(BitmapSetTest, RestoreOfAnotherSizeIsInconsistent) {
  BitmapSet small(kMiB);
  ASSERT_TRUE(small.Add("b", 0).ok());
  BitmapSet bigger(2 * kMiB);
  bigger.Restore(small.Records());
  EXPECT_FALSE(bigger.Get("b")->consistent);
  EXPECT_THAT(bigger.Get("b")->inconsistent_reason, HasSubstr("size"));
  bigger.Mark(0, 1);  // still recording (it is active), without crashing
}

}  // namespace
}  // namespace nbdmgr
