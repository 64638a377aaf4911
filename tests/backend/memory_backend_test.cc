#include "lib/backend/memory_backend.h"

#include <gtest/gtest.h>

#include <atomic>
#include <span>
#include <thread>
#include <vector>

namespace nbdmgr {
namespace {

constexpr uint64_t kPage = MemoryBackend::kPageSize;

std::vector<Extent> AllExtents(Backend& b, uint64_t off, uint64_t len) {
  std::vector<Extent> out;
  EXPECT_TRUE(b.Extents(off, len, [&](Extent e) {
                 out.push_back(e);
                 return true;
               }).ok());
  return out;
}

TEST(MemoryBackendTest, RejectsBadSizes) {
  EXPECT_FALSE(MemoryBackend::Create(0).ok());
  EXPECT_FALSE(MemoryBackend::Create(MemoryBackend::kMaxSize + 1).ok());
}

TEST(MemoryBackendTest, StartsEmptyAndSparse) {
  auto b = *MemoryBackend::Create(1 << 30);
  EXPECT_EQ(b->allocated_bytes(), 0u);
  std::vector<uint8_t> buf(4096, 0xff);
  ASSERT_TRUE(b->Read(12345, buf).ok());
  EXPECT_EQ(buf, std::vector<uint8_t>(4096, 0));
  auto ex = AllExtents(*b, 0, 1 << 30);
  ASSERT_EQ(ex.size(), 1u);
  EXPECT_EQ(ex[0].flags, kExtentHole | kExtentZero);
}

TEST(MemoryBackendTest, WriteAcrossPagesAllocatesOnlyThose) {
  auto b = *MemoryBackend::Create(16 * kPage);
  std::vector<uint8_t> data(kPage + 10, 0xab);
  ASSERT_TRUE(b->Write(kPage - 5, data, false).ok());
  EXPECT_EQ(b->allocated_bytes(), 3 * kPage);
  std::vector<uint8_t> back(data.size());
  ASSERT_TRUE(b->Read(kPage - 5, back).ok());
  EXPECT_EQ(back, data);
  auto ex = AllExtents(*b, 0, 16 * kPage);
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[0].length, 3 * kPage);
  EXPECT_EQ(ex[0].flags, 0u);
}

TEST(MemoryBackendTest, TrimFreesWholePagesAndZeroesPartial) {
  auto b = *MemoryBackend::Create(4 * kPage);
  std::vector<uint8_t> data(4 * kPage, 1);
  ASSERT_TRUE(b->Write(0, data, false).ok());
  ASSERT_TRUE(b->Trim(kPage / 2, 2 * kPage, false).ok());
  EXPECT_EQ(b->allocated_bytes(), 3 * kPage);  // page 1 freed
  std::vector<uint8_t> back(4 * kPage);
  ASSERT_TRUE(b->Read(0, back).ok());
  for (uint64_t i = 0; i < 4 * kPage; ++i) {
    uint8_t want = (i >= kPage / 2 && i < kPage / 2 + 2 * kPage) ? 0 : 1;
    ASSERT_EQ(back[i], want) << i;
  }
}

TEST(MemoryBackendTest, ZeroNoHoleAllocates) {
  auto b = *MemoryBackend::Create(4 * kPage);
  ASSERT_TRUE(b->Zero(0, 2 * kPage, ZeroOptions{false, false, false}).ok());
  EXPECT_EQ(b->allocated_bytes(), 2 * kPage);
  ASSERT_TRUE(b->Zero(0, 2 * kPage, ZeroOptions{true, true, false}).ok());
  EXPECT_EQ(b->allocated_bytes(), 0u);
}

TEST(MemoryBackendTest, ExtentsCanStopEarly) {
  auto b = *MemoryBackend::Create(8 * kPage);
  std::vector<uint8_t> d(kPage, 1);
  ASSERT_TRUE(b->Write(kPage, d, false).ok());
  ASSERT_TRUE(b->Write(3 * kPage, d, false).ok());
  int calls = 0;
  ASSERT_TRUE(
      b->Extents(0, 8 * kPage, [&](Extent) { return ++calls < 2; }).ok());
  EXPECT_EQ(calls, 2);
}

TEST(MemoryBackendTest, ConcurrentWritersAndTrimmersKeepPagesConsistent) {
  auto b = *MemoryBackend::Create(64 * kPage);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint8_t> d(kPage, static_cast<uint8_t>(t + 1));
      for (int i = 0; i < 500; ++i) {
        uint64_t page = static_cast<uint64_t>((i * 7 + t) % 64);
        if (i % 3 == 0) {
          ASSERT_TRUE(b->Trim(page * kPage, kPage, false).ok());
        } else {
          ASSERT_TRUE(b->Write(page * kPage, d, false).ok());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  // Each page is either freed or holds one writer's full pattern.
  std::vector<uint8_t> back(kPage);
  for (uint64_t p = 0; p < 64; ++p) {
    ASSERT_TRUE(b->Read(p * kPage, back).ok());
    for (uint8_t v : back) ASSERT_EQ(v, back[0]);
  }
}

// Collects what ReadPinned lends: the bytes (copied) and the pins.
struct Lent {
  std::vector<uint8_t> bytes;
  std::vector<std::span<const uint8_t>> views;
  std::vector<Pin*> pins;
  void ReleaseAll() {
    for (Pin* p : pins) p->Release();
    pins.clear();
  }
};

Lent ReadLent(Backend& b, uint64_t offset, uint64_t length) {
  Lent out;
  EXPECT_TRUE(
      b.ReadPinned(offset, length, [&](std::span<const uint8_t> v, Pin* pin) {
         out.bytes.insert(out.bytes.end(), v.begin(), v.end());
         out.views.push_back(v);
         if (pin != nullptr) out.pins.push_back(pin);
       }).ok());
  return out;
}

TEST(MemoryBackendTest, ReadPinnedLendsPagesAndZeroesForHoles) {
  auto b = *MemoryBackend::Create(8 * kPage);
  ASSERT_TRUE(b->caps().zero_copy_read);
  std::vector<uint8_t> data(kPage + 100, 0x5a);
  ASSERT_TRUE(b->Write(2 * kPage - 50, data, false).ok());
  // Pages 1..3 hold data at [2*kPage-50, 3*kPage+50); page 0 is a hole.
  Lent got = ReadLent(*b, 100, 4 * kPage);
  std::vector<uint8_t> want(4 * kPage);
  ASSERT_TRUE(b->Read(100, want).ok());
  EXPECT_EQ(got.bytes, want);
  EXPECT_EQ(got.views.size(), 5u);  // page pieces
  EXPECT_EQ(got.pins.size(), 3u);   // only the allocated pages are pinned
  got.ReleaseAll();
}

TEST(MemoryBackendTest, TrimNeverFreesAPinnedPage) {
  auto b = *MemoryBackend::Create(4 * kPage);
  std::vector<uint8_t> data(kPage, 0x77);
  ASSERT_TRUE(b->Write(kPage, data, false).ok());
  Lent got = ReadLent(*b, kPage, kPage);
  ASSERT_EQ(got.pins.size(), 1u);
  ASSERT_TRUE(b->Trim(kPage, kPage, false).ok());
  EXPECT_EQ(b->allocated_bytes(), 0u);  // gone from the export...
  // ...but the lent bytes are still the page's (ASan: not freed).
  EXPECT_EQ(std::vector<uint8_t>(got.views[0].begin(), got.views[0].end()),
            data);
  std::vector<uint8_t> back(kPage, 1);
  ASSERT_TRUE(b->Read(kPage, back).ok());
  EXPECT_EQ(back, std::vector<uint8_t>(kPage, 0));
  got.ReleaseAll();  // frees it now
}

TEST(MemoryBackendTest, PinsOutliveTheBackend) {
  auto b = *MemoryBackend::Create(2 * kPage);
  std::vector<uint8_t> data(kPage, 0x42);
  ASSERT_TRUE(b->Write(0, data, false).ok());
  Lent got = ReadLent(*b, 0, kPage);
  b.reset();
  EXPECT_EQ(std::vector<uint8_t>(got.views[0].begin(), got.views[0].end()),
            data);
  got.ReleaseAll();
}

TEST(MemoryBackendTest, ConcurrentPinnersAndTrimmersNeverSeeFreedMemory) {
  auto b = *MemoryBackend::Create(16 * kPage);
  std::atomic<bool> stop{false};
  std::thread trimmer([&] {
    std::vector<uint8_t> d(kPage, 9);
    for (int i = 0; i < 2000; ++i) {
      uint64_t page = static_cast<uint64_t>(i % 16);
      ASSERT_TRUE(b->Write(page * kPage, d, false).ok());
      ASSERT_TRUE(b->Trim(page * kPage, kPage, false).ok());
    }
    stop = true;
  });
  uint64_t checked = 0;
  while (!stop) {
    Lent got = ReadLent(*b, 0, 16 * kPage);
    // A page is lent whole: either the written pattern or a hole.
    for (auto v : got.views) {
      for (uint8_t x : v) ASSERT_TRUE(x == 9 || x == 0);
    }
    checked += got.pins.size();
    got.ReleaseAll();
  }
  trimmer.join();
  EXPECT_EQ(b->allocated_bytes(), 0u);
  (void)checked;
}

// What Extents reports for each page of [0, pages * kPage), one flags value
// per page.
std::vector<uint32_t> PageFlags(Backend& b, uint64_t pages) {
  std::vector<uint32_t> out;
  for (const Extent& e : AllExtents(b, 0, pages * kPage)) {
    EXPECT_EQ(e.length % kPage, 0u);
    out.insert(out.end(), e.length / kPage, e.flags);
  }
  return out;
}

constexpr uint32_t kHoleZero = kExtentHole | kExtentZero;
constexpr ZeroOptions kNoHole{/*may_trim=*/false, /*fast=*/false,
                              /*fua=*/false};

TEST(MemoryBackendTest, CacheIsAdvertisedAndAnsweredInline) {
  auto b = *MemoryBackend::Create(4 * kPage);
  EXPECT_TRUE(b->caps().can_cache);
  EXPECT_FALSE(b->caps().blocking);
  EXPECT_TRUE(b->Cache(0, 4 * kPage).ok());
  EXPECT_EQ(b->allocated_bytes(), 0u);  // a hint: allocates nothing
}

TEST(MemoryBackendTest, NoHoleZeroOfWholePagesIsKnownZeroAndAllocated) {
  auto b = *MemoryBackend::Create(6 * kPage);
  std::vector<uint8_t> data(4 * kPage, 0x33);
  ASSERT_TRUE(b->Write(0, data, false).ok());
  ASSERT_TRUE(b->Zero(kPage, 2 * kPage, kNoHole).ok());
  EXPECT_EQ(b->allocated_bytes(), 4 * kPage);  // still allocated
  EXPECT_EQ(PageFlags(*b, 6),
            (std::vector<uint32_t>{0, kExtentZero, kExtentZero, 0, kHoleZero,
                                   kHoleZero}));
  std::vector<uint8_t> back(2 * kPage, 1);
  ASSERT_TRUE(b->Read(kPage, back).ok());
  EXPECT_EQ(back, std::vector<uint8_t>(2 * kPage, 0));
}

TEST(MemoryBackendTest, PartialPageZeroDoesNotMarkAWrittenPage) {
  auto b = *MemoryBackend::Create(4 * kPage);
  std::vector<uint8_t> data(3 * kPage, 0x44);
  ASSERT_TRUE(b->Write(0, data, false).ok());
  // Half of page 0, all of page 1, half of page 2.
  ASSERT_TRUE(b->Zero(kPage / 2, 2 * kPage, kNoHole).ok());
  EXPECT_EQ(PageFlags(*b, 4),
            (std::vector<uint32_t>{0, kExtentZero, 0, kHoleZero}));
  // Zeroing the rest of page 0 in two pieces still does not mark it: only
  // a zero of the whole page at once does.
  ASSERT_TRUE(b->Zero(0, kPage / 2, kNoHole).ok());
  EXPECT_EQ(PageFlags(*b, 1), std::vector<uint32_t>{0});
  ASSERT_TRUE(b->Zero(0, kPage, kNoHole).ok());
  EXPECT_EQ(PageFlags(*b, 1), std::vector<uint32_t>{kExtentZero});
}

TEST(MemoryBackendTest, NoHoleZeroOfAHoleAllocatesAKnownZeroPage) {
  auto b = *MemoryBackend::Create(2 * kPage);
  ASSERT_TRUE(b->Zero(100, 200, kNoHole).ok());  // part of a hole page
  EXPECT_EQ(b->allocated_bytes(), kPage);
  EXPECT_EQ(PageFlags(*b, 2), (std::vector<uint32_t>{kExtentZero, kHoleZero}));
}

TEST(MemoryBackendTest, AnyWriteClearsKnownZero) {
  auto b = *MemoryBackend::Create(3 * kPage);
  ASSERT_TRUE(b->Zero(0, 3 * kPage, kNoHole).ok());
  EXPECT_EQ(PageFlags(*b, 3), std::vector<uint32_t>(3, kExtentZero));
  std::vector<uint8_t> one(1, 0x99);
  ASSERT_TRUE(b->Write(kPage + kPage - 1, one, false).ok());  // last byte
  std::vector<uint8_t> zero_byte(1, 0);
  ASSERT_TRUE(b->Write(2 * kPage, zero_byte, false).ok());  // even zeroes
  EXPECT_EQ(PageFlags(*b, 3), (std::vector<uint32_t>{kExtentZero, 0, 0}));
  // A trim frees the page: a hole again; a write there is data.
  ASSERT_TRUE(b->Trim(0, kPage, false).ok());
  EXPECT_EQ(PageFlags(*b, 1), std::vector<uint32_t>{kHoleZero});
  ASSERT_TRUE(b->Write(10, one, false).ok());
  EXPECT_EQ(PageFlags(*b, 1), std::vector<uint32_t>{0});
  // A partial zero of a page known zero leaves it known zero.
  ASSERT_TRUE(b->Zero(kPage, kPage, kNoHole).ok());
  ASSERT_TRUE(b->Zero(kPage + 10, 10, kNoHole).ok());
  ASSERT_TRUE(b->Trim(kPage + 20, 10, false).ok());
  EXPECT_EQ(PageFlags(*b, 2), (std::vector<uint32_t>{0, kExtentZero}));
}

TEST(MemoryBackendTest, PinnedPageZeroedWithNoHole) {
  auto b = *MemoryBackend::Create(2 * kPage);
  std::vector<uint8_t> data(kPage, 0x77);
  ASSERT_TRUE(b->Write(0, data, false).ok());
  Lent got = ReadLent(*b, 0, kPage);
  ASSERT_EQ(got.pins.size(), 1u);
  ASSERT_TRUE(b->Zero(0, kPage, kNoHole).ok());
  EXPECT_EQ(PageFlags(*b, 1), std::vector<uint32_t>{kExtentZero});
  // The page is zeroed in place (the lent view shows it, as any overlapping
  // write would) and stays allocated; the pin still keeps it alive.
  for (uint8_t x : got.views[0]) ASSERT_EQ(x, 0);
  ASSERT_TRUE(b->Trim(0, kPage, false).ok());
  EXPECT_EQ(b->allocated_bytes(), 0u);
  got.ReleaseAll();  // frees it now (ASan: exactly once)
}

TEST(MemoryBackendTest, KnownZeroUnderConcurrentWritersZeroersAndReaders) {
  // Each writer owns the pages p % 4 == t (so it knows what each of them
  // must report) while sharing tables and stripes with the others; a
  // reader asks for extents all along (TSan: no data race).
  constexpr uint64_t kPages = 64;
  auto b = *MemoryBackend::Create(kPages * kPage);
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    while (!stop) (void)AllExtents(*b, 0, kPages * kPage);
  });
  std::vector<std::thread> threads;
  for (uint64_t t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint8_t> d(kPage, static_cast<uint8_t>(t + 1));
      std::vector<uint8_t> back(kPage);
      for (int i = 0; i < 400; ++i) {
        const uint64_t page = (static_cast<uint64_t>(i) * 5 % 16) * 4 + t;
        const uint64_t at = page * kPage;
        uint32_t want = 0;
        switch (i % 5) {
          case 0:
          case 3:
            ASSERT_TRUE(
                b->Write(at + (i % 3) * 100, std::span(d).first(100), false)
                    .ok());
            want = 0;
            break;
          case 1:
            ASSERT_TRUE(b->Zero(at, kPage, kNoHole).ok());
            want = kExtentZero;
            break;
          case 2:
            ASSERT_TRUE(b->Trim(at, kPage, false).ok());
            want = kHoleZero;
            break;
          case 4: {
            // Part of the page: what it was stays, except a hole becomes
            // an allocated page known zero.
            const auto before = AllExtents(*b, at, kPage);
            ASSERT_TRUE(b->Zero(at + 10, 100, kNoHole).ok());
            want = before[0].flags == kHoleZero ? kExtentZero : before[0].flags;
            break;
          }
        }
        const auto ex = AllExtents(*b, at, kPage);
        ASSERT_EQ(ex.size(), 1u);
        ASSERT_EQ(ex[0].flags, want) << "page " << page << " op " << i;
        if (want & kExtentZero) {
          ASSERT_TRUE(b->Read(at, back).ok());
          for (uint8_t x : back) ASSERT_EQ(x, 0);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  stop = true;
  reader.join();
}

}  // namespace
}  // namespace nbdmgr
