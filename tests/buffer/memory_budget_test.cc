#include "lib/buffer/memory_budget.h"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <thread>
#include <vector>

namespace nbdmgr {
namespace {

namespace asio = boost::asio;

TEST(MemoryBudgetTest, TryChargeRespectsCap) {
  MemoryBudget b(100);
  EXPECT_TRUE(b.TryCharge(60));
  EXPECT_FALSE(b.TryCharge(41));
  EXPECT_TRUE(b.TryCharge(40));
  b.Release(100);
  EXPECT_EQ(b.stats().used, 0u);
  EXPECT_EQ(b.stats().peak, 100u);
}

TEST(MemoryBudgetTest, UnlimitedWhenCapZero) {
  MemoryBudget b(0);
  EXPECT_TRUE(b.TryCharge(1ull << 40));
  EXPECT_TRUE(b.Fits(1ull << 50));
}

TEST(MemoryBudgetTest, WaitersResumeInFifoOrderWhenBytesReturn) {
  MemoryBudget b(100);
  ASSERT_TRUE(b.TryCharge(100));
  asio::io_context ioc;
  std::vector<int> order;
  for (int i = 0; i < 3; ++i) {
    asio::co_spawn(
        ioc,
        [&, i]() -> asio::awaitable<void> {
          co_await b.Charge(i == 0 ? 80 : 10);
          order.push_back(i);
        },
        asio::detached);
  }
  ioc.poll();
  EXPECT_TRUE(order.empty());
  EXPECT_EQ(b.stats().waiting, 3u);
  // 30 bytes free: waiter 0 needs 80 and blocks the queue (no starvation
  // of the big request by small ones).
  b.Release(30);
  ioc.poll();
  EXPECT_TRUE(order.empty());
  b.Release(70);
  ioc.poll();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(b.stats().used, 100u);
  EXPECT_EQ(b.stats().waits, 3u);
}

TEST(MemoryBudgetTest, RaisingCapWakesWaiters) {
  MemoryBudget b(10);
  ASSERT_TRUE(b.TryCharge(10));
  asio::io_context ioc;
  bool done = false;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await b.Charge(50);
        done = true;
      },
      asio::detached);
  ioc.poll();
  EXPECT_FALSE(done);
  b.set_cap(100);
  ioc.poll();
  EXPECT_TRUE(done);
}

TEST(MemoryBudgetTest, LoweredCapAppliesAsBytesReturn) {
  MemoryBudget b(100);
  ASSERT_TRUE(b.TryCharge(90));
  b.set_cap(50);
  EXPECT_FALSE(b.TryCharge(1));
  b.Release(60);  // 30 in use
  EXPECT_TRUE(b.TryCharge(20));
  EXPECT_FALSE(b.TryCharge(1));
}

TEST(MemoryBudgetTest, NeverAboveCapUnderConcurrency) {
  MemoryBudget b(1000);
  std::atomic<int64_t> live{0}, worst{0};
  asio::io_context a, c;
  auto worker = [&]() -> asio::awaitable<void> {
    for (int i = 0; i < 2000; ++i) {
      co_await b.Charge(100);
      int64_t now = live.fetch_add(100) + 100;
      int64_t w = worst.load();
      while (now > w && !worst.compare_exchange_weak(w, now)) {
      }
      live.fetch_sub(100);
      b.Release(100);
    }
  };
  for (int i = 0; i < 20; ++i) {
    asio::co_spawn(i % 2 ? a : c, worker(), asio::detached);
  }
  std::thread t1([&] { a.run(); }), t2([&] { c.run(); });
  t1.join();
  t2.join();
  EXPECT_LE(worst.load(), 1000);
  EXPECT_EQ(b.stats().used, 0u);
  EXPECT_LE(b.stats().peak, 1000u);
}

}  // namespace
}  // namespace nbdmgr
