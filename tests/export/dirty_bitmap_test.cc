#include "lib/export/dirty_bitmap.h"

#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nbdmgr {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

std::unique_ptr<DirtyBitmap> Make(uint64_t size, uint64_t granularity) {
  auto b = DirtyBitmap::Create(size, granularity);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? std::move(*b) : nullptr;
}

std::vector<std::pair<uint64_t, bool>> Runs(const DirtyBitmap& b,
                                            uint64_t offset, uint64_t length) {
  std::vector<std::pair<uint64_t, bool>> out;
  b.Extents(offset, length, [&](uint64_t len, bool dirty) {
    out.emplace_back(len, dirty);
    return true;
  });
  return out;
}

// Byte-level runs of a model that dirties whole blocks.
std::vector<std::pair<uint64_t, bool>> ModelRuns(const std::vector<bool>& m,
                                                 uint64_t size, uint64_t g,
                                                 uint64_t offset,
                                                 uint64_t length) {
  std::vector<std::pair<uint64_t, bool>> out;
  const uint64_t end = std::min(size, offset + length);
  for (uint64_t pos = offset; pos < end;) {
    const bool dirty = m[pos / g];
    const uint64_t next = std::min(end, (pos / g + 1) * g);
    if (!out.empty() && out.back().second == dirty) {
      out.back().first += next - pos;
    } else {
      out.emplace_back(next - pos, dirty);
    }
    pos = next;
  }
  return out;
}

TEST(DirtyBitmapTest, GranularityMustBeAPowerOfTwoInRange) {
  for (uint64_t g : {uint64_t{0}, uint64_t{256}, uint64_t{3000},
                     uint64_t{64} * kKiB + 1, uint64_t{4} << 30}) {
    auto b = DirtyBitmap::Create(kMiB, g);
    ASSERT_FALSE(b.ok()) << g;
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(b.status().message(), HasSubstr(std::to_string(g)));
  }
  EXPECT_TRUE(DirtyBitmap::Create(kMiB, 512).ok());
  EXPECT_TRUE(DirtyBitmap::Create(kMiB, uint64_t{1} << 31).ok());
}

TEST(DirtyBitmapTest, MemoryIsOneBitPerBlock) {
  auto b = Make(uint64_t{1} << 40, 64 * kKiB);  // 1 TiB
  EXPECT_EQ(b->memory_bytes(), 2 * kMiB);
  EXPECT_EQ(Make(1, 64 * kKiB)->memory_bytes(), 8u);
}

TEST(DirtyBitmapTest, MarksEveryBlockARangeTouches) {
  auto b = Make(1 * kMiB, 64 * kKiB);
  EXPECT_EQ(b->dirty_bytes(), 0u);
  EXPECT_EQ(Runs(*b, 0, kMiB),
            (std::vector<std::pair<uint64_t, bool>>{{kMiB, false}}));
  b->Mark(64 * kKiB + 1, 1);   // block 1
  b->Mark(192 * kKiB - 1, 2);  // blocks 2 and 3
  b->Mark(5 * 64 * kKiB, 0);   // nothing
  b->Mark(2 * kMiB, 4096);     // past the end: nothing
  EXPECT_EQ(b->dirty_bytes(), 3 * 64 * kKiB);
  EXPECT_EQ(
      Runs(*b, 0, kMiB),
      (std::vector<std::pair<uint64_t, bool>>{
          {64 * kKiB, false}, {192 * kKiB, true}, {kMiB - 256 * kKiB, false}}));
  // A subrange starts and ends where asked.
  EXPECT_EQ(Runs(*b, 100 * kKiB, 200 * kKiB),
            (std::vector<std::pair<uint64_t, bool>>{{156 * kKiB, true},
                                                    {44 * kKiB, false}}));
  // Marking again changes nothing.
  b->Mark(64 * kKiB, 192 * kKiB);
  EXPECT_EQ(b->dirty_bytes(), 3 * 64 * kKiB);
  b->Clear();
  EXPECT_EQ(b->dirty_bytes(), 0u);
  EXPECT_EQ(Runs(*b, 0, kMiB).size(), 1u);
}

TEST(DirtyBitmapTest, LastPartialBlockCountsUpToTheSize) {
  auto b = Make(100 * kKiB, 64 * kKiB);  // blocks of 64 and 36 KiB
  b->Mark(99 * kKiB, 10 * kKiB);         // clipped to the size
  EXPECT_EQ(b->dirty_bytes(), 36 * kKiB);
  EXPECT_EQ(Runs(*b, 0, ~uint64_t{0}),
            (std::vector<std::pair<uint64_t, bool>>{{64 * kKiB, false},
                                                    {36 * kKiB, true}}));
  b->Mark(0, ~uint64_t{0});  // everything, without overflowing
  EXPECT_EQ(b->dirty_bytes(), 100 * kKiB);
}

TEST(DirtyBitmapTest, StopsWhenTold) {
  auto b = Make(kMiB, 4 * kKiB);
  for (uint64_t i = 0; i < 256; i += 2) b->Mark(i * 4 * kKiB, 1);
  int calls = 0;
  b->Extents(0, kMiB, [&](uint64_t, bool) { return ++calls < 3; });
  EXPECT_EQ(calls, 3);
}

// Random marks against a model, across word boundaries and long runs.
TEST(DirtyBitmapTest, MatchesAModel) {
  std::mt19937_64 rng(17);
  for (uint64_t g : {uint64_t{512}, 4 * kKiB, 64 * kKiB}) {
    const uint64_t size = 300 * g + g / 2;
    auto b = Make(size, g);
    std::vector<bool> model(301, false);
    for (int i = 0; i < 200; ++i) {
      const uint64_t off = rng() % size;
      const uint64_t len = rng() % 4 == 0 ? rng() % (80 * g) : rng() % (2 * g);
      b->Mark(off, len);
      if (len > 0) {
        for (uint64_t k = off / g; k <= (std::min(size, off + len) - 1) / g;
             ++k) {
          model[k] = true;
        }
      }
      const uint64_t qoff = rng() % size, qlen = rng() % size;
      ASSERT_EQ(Runs(*b, qoff, qlen), ModelRuns(model, size, g, qoff, qlen))
          << "g=" << g << " i=" << i;
    }
    uint64_t expect = 0;
    for (uint64_t k = 0; k < model.size(); ++k) {
      if (model[k]) expect += std::min(g, size - k * g);
    }
    EXPECT_EQ(b->dirty_bytes(), expect) << g;
  }
}

// Connections mark at once: every mark lands, and the count stays exact.
TEST(DirtyBitmapTest, ConcurrentMarksAllLand) {
  const uint64_t g = 4 * kKiB, size = 64 * kMiB;
  auto b = Make(size, g);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      // Every thread marks every 3rd block from its own start, with
      // overlaps between threads, and reads runs meanwhile.
      for (uint64_t k = t; k < size / g; k += 3) {
        b->Mark(k * g, g);
        if (k % 512 == 0) (void)Runs(*b, 0, size);
      }
    });
  }
  for (auto& th : threads) th.join();
  uint64_t dirty = 0;
  for (auto [len, d] : Runs(*b, 0, size)) {
    if (d) dirty += len;
  }
  // Blocks k with k % 3 in {0,1,2} from starts 0..3: all of them.
  EXPECT_EQ(dirty, size);
  EXPECT_EQ(b->dirty_bytes(), size);
}

TEST(DirtyBitmapTest, SerializeParseRoundTrip) {
  const uint64_t size = 10 * kMiB + 12345, g = 64 * kKiB;
  auto b = Make(size, g);
  b->Mark(0, 1);
  b->Mark(3 * kMiB, 2 * kMiB);
  b->Mark(size - 1, 1);  // the partial last block
  const std::string data = b->Serialize();
  auto back = DirtyBitmap::Parse(data, size);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)->granularity(), g);
  EXPECT_EQ((*back)->dirty_bytes(), b->dirty_bytes());
  EXPECT_EQ(Runs(**back, 0, size), Runs(*b, 0, size));
  // Marks go on after a load.
  (*back)->Mark(kMiB, 1);
  EXPECT_EQ((*back)->dirty_bytes(), b->dirty_bytes() + g);
}

TEST(DirtyBitmapTest, ParseRefusesWhatItDidNotWrite) {
  const uint64_t size = 4 * kMiB;
  auto b = Make(size, 64 * kKiB);
  b->Mark(kMiB, kMiB);
  const std::string good = b->Serialize();
  // Every truncation and every flipped byte is DataLoss, never a bitmap.
  for (size_t n = 0; n < good.size(); n += 3) {
    auto r = DirtyBitmap::Parse(good.substr(0, n), size);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << n;
  }
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] ^= 0x10;
    auto r = DirtyBitmap::Parse(bad, size);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << i;
  }
  // A bitmap of another size: the export was resized.
  auto r = DirtyBitmap::Parse(good, 2 * size);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr(std::to_string(size)));
}

}  // namespace
}  // namespace nbdmgr
