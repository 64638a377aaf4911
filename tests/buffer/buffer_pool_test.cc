#include "lib/buffer/buffer_pool.h"

#include <gtest/gtest.h>

#include <thread>

namespace nbdmgr {
namespace {

TEST(BufferPoolTest, ClassSizes) {
  EXPECT_EQ(BufferPool::ClassSize(1), 4096u);
  EXPECT_EQ(BufferPool::ClassSize(4096), 4096u);
  EXPECT_EQ(BufferPool::ClassSize(4097), 8192u);
  EXPECT_EQ(BufferPool::ClassSize(32u << 20), 32u << 20);
}

TEST(BufferPoolTest, ReusesReturnedBuffers) {
  BufferPool pool(32 << 20);
  uint8_t* a = pool.Get(1 << 20);
  ASSERT_NE(a, nullptr);
  a[0] = 1;
  a[(1 << 20) - 1] = 2;  // the whole class is usable
  EXPECT_EQ(pool.stats().bytes_in_use, 1u << 20);
  pool.Put(a, 1 << 20);
  EXPECT_EQ(pool.stats().bytes_in_use, 0u);
  EXPECT_EQ(pool.stats().bytes_cached, 1u << 20);
  uint8_t* b = pool.Get(700000);  // same class
  EXPECT_EQ(b, a);
  EXPECT_EQ(pool.stats().reuses, 1u);
  EXPECT_EQ(pool.stats().allocations, 1u);
  pool.Put(b, 1 << 20);
}

TEST(BufferPoolTest, RefusesOutOfRange) {
  BufferPool pool(1 << 20);
  EXPECT_EQ(pool.Get(0), nullptr);
  EXPECT_EQ(pool.Get((1 << 20) + 1), nullptr);
}

TEST(BufferPoolTest, ReleaseIdleFreesOnlyOldBuffers) {
  BufferPool pool(32 << 20);
  uint8_t* a = pool.Get(4096);
  pool.Put(a, 4096);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  uint8_t* b = pool.Get(8192);
  pool.Put(b, 8192);
  EXPECT_EQ(pool.ReleaseIdle(std::chrono::milliseconds(30)), 4096u);
  EXPECT_EQ(pool.stats().bytes_cached, 8192u);
  EXPECT_EQ(pool.ReleaseIdle(std::chrono::milliseconds(0)), 8192u);
  EXPECT_EQ(pool.stats().bytes_cached, 0u);
  EXPECT_EQ(pool.stats().releases_to_os, 2u);
}

TEST(BufferPoolTest, ConcurrentGetPutBalances) {
  BufferPool pool(1 << 20);
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        size_t n = 4096u << (i % 6);
        uint8_t* p = pool.Get(n);
        ASSERT_NE(p, nullptr);
        p[n - 1] = 1;
        pool.Put(p, BufferPool::ClassSize(n));
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(pool.stats().bytes_in_use, 0u);
}

}  // namespace
}  // namespace nbdmgr
