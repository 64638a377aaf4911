#include "lib/util/watchdog.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "gtest/gtest.h"

namespace nbdmgr {
namespace {

using namespace std::chrono_literals;

// Polls `cond` for up to 10 s.
template <typename Cond>
bool Eventually(Cond cond) {
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

TEST(WatchdogTest, ExpiresOnceAfterTheTimeout) {
  std::atomic<int> fired{0};
  Watchdog w(20ms, [&] { ++fired; });
  EXPECT_TRUE(Eventually([&] { return fired.load() == 1; }));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(fired.load(), 1);
}

TEST(WatchdogTest, DestroyedInTimeNeverExpires) {
  std::atomic<int> fired{0};
  {
    Watchdog w(1h, [&] { ++fired; });
  }
  EXPECT_EQ(fired.load(), 0);
}

TEST(WatchdogTest, ShortenBringsTheDeadlineForward) {
  std::atomic<int> fired{0};
  Watchdog w(1h, [&] { ++fired; });
  std::this_thread::sleep_for(10ms);
  EXPECT_EQ(fired.load(), 0);
  w.Shorten(0ms);
  EXPECT_TRUE(Eventually([&] { return fired.load() == 1; }));
}

TEST(WatchdogTest, ShortenNeverPostpones) {
  std::atomic<int> fired{0};
  Watchdog w(20ms, [&] { ++fired; });
  w.Shorten(1h);
  EXPECT_TRUE(Eventually([&] { return fired.load() == 1; }));
}

}  // namespace
}  // namespace nbdmgr
