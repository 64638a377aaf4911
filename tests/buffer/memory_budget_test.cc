#include "lib/buffer/memory_budget.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace nbdmgr {
namespace {

TEST(MemoryBudgetTest, TryChargeRespectsCap) {
  MemoryBudget b(100);
  EXPECT_TRUE(b.TryCharge(60));
  EXPECT_FALSE(b.TryCharge(41));
  EXPECT_TRUE(b.TryCharge(40));
  b.Release(100);
  EXPECT_EQ(b.stats().used, 0u);
  EXPECT_EQ(b.stats().peak, 100u);
  EXPECT_EQ(b.stats().refused, 1u);
}

TEST(MemoryBudgetTest, UnlimitedWhenCapZero) {
  MemoryBudget b(0);
  EXPECT_TRUE(b.TryCharge(1ull << 40));
  EXPECT_EQ(b.headroom(), UINT64_MAX);
}

TEST(MemoryBudgetTest, ChargeLargerThanCapIsRefusedWithoutOverflow) {
  MemoryBudget b(100);
  EXPECT_FALSE(b.TryCharge(UINT64_MAX));
  EXPECT_FALSE(b.TryCharge(101));
  EXPECT_EQ(b.stats().used, 0u);
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
  auto worker = [&] {
    for (int i = 0; i < 20000; ++i) {
      if (!b.TryCharge(100)) continue;
      int64_t now = live.fetch_add(100) + 100;
      int64_t w = worst.load();
      while (now > w && !worst.compare_exchange_weak(w, now)) {
      }
      live.fetch_sub(100);
      b.Release(100);
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  EXPECT_LE(worst.load(), 1000);
  EXPECT_EQ(b.stats().used, 0u);
  EXPECT_LE(b.stats().peak, 1000u);
}

}  // namespace
}  // namespace nbdmgr
