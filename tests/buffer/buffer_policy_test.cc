#include "lib/buffer/buffer_policy.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace nbdmgr {
namespace {

constexpr size_t kMax = 32 << 20;

class BufferPolicyTest : public ::testing::Test {
 protected:
  BufferLease Acquire(ConnectionBuffers& c, size_t n) {
    return c.TryAcquire(n);
  }
  BufferSettings With(BufferStrategy s, uint64_t cap = 0) {
    BufferSettings b;
    b.strategy = s;
    b.memory_cap_bytes = cap;
    return b;
  }
  // Share 100%: one connection may take a whole cap (the share has its own
  // tests below).
  BufferSystem system_{kMax, 0, 100};
};

TEST_F(BufferPolicyTest, ParsesNames) {
  EXPECT_EQ(*ParseBufferStrategy("pool"), BufferStrategy::kPool);
  EXPECT_EQ(*ParseBufferStrategy("stream"), BufferStrategy::kStream);
  EXPECT_FALSE(ParseBufferStrategy("magic").ok());
}

TEST_F(BufferPolicyTest, PoolReusesAcrossConnectionsAndAccountsExactly) {
  ExportBuffers eb(system_, With(BufferStrategy::kPool));
  auto c1 = eb.NewConnection();
  auto c2 = eb.NewConnection();
  {
    BufferLease l = Acquire(*c1, 1 << 20);
    ASSERT_TRUE(l);
    EXPECT_EQ(l.size(), 1u << 20);
    EXPECT_EQ(eb.stats().in_use, 1u << 20);
    EXPECT_EQ(system_.budget().stats().used, 1u << 20);
  }
  EXPECT_EQ(eb.stats().in_use, 0u);
  EXPECT_EQ(system_.pool().stats().bytes_cached, 1u << 20);
  BufferLease l2 = Acquire(*c2, 700000);  // same class, other connection
  EXPECT_EQ(eb.stats().reuses, 1u);
  EXPECT_EQ(eb.stats().allocations, 1u);
}

TEST_F(BufferPolicyTest, ExactFreesAfterUse) {
  ExportBuffers eb(system_, With(BufferStrategy::kExact));
  auto c = eb.NewConnection();
  {
    BufferLease l = Acquire(*c, 12345);
    EXPECT_EQ(l.capacity(), 12345u);
  }
  EXPECT_EQ(eb.stats().in_use, 0u);
  EXPECT_EQ(system_.budget().stats().used, 0u);
  EXPECT_EQ(system_.pool().stats().bytes_cached, 0u);
}

TEST_F(BufferPolicyTest, FixedHoldsMaxPayloadForConnectionLife) {
  ExportBuffers eb(system_, With(BufferStrategy::kFixed));
  auto c = eb.NewConnection();
  {
    BufferLease l = Acquire(*c, 4096);
    EXPECT_EQ(l.capacity(), kMax);
  }
  // Returned to the connection, still held and charged.
  EXPECT_EQ(eb.stats().cached, kMax);
  EXPECT_EQ(system_.budget().stats().used, kMax);
  {
    BufferLease l = Acquire(*c, 8192);
    EXPECT_EQ(eb.stats().reuses, 1u);
  }
  c.reset();  // connection closes
  EXPECT_EQ(eb.stats().cached, 0u);
  EXPECT_EQ(system_.budget().stats().used, 0u);
}

TEST_F(BufferPolicyTest, GrowGrowsNeverShrinks) {
  ExportBuffers eb(system_, With(BufferStrategy::kGrow));
  auto c = eb.NewConnection();
  {
    BufferLease l = Acquire(*c, 10000);
    EXPECT_EQ(l.capacity(), 12288u);
  }
  {
    BufferLease l = Acquire(*c, 1 << 20);
    EXPECT_EQ(l.capacity(), 1u << 20);
  }
  {
    BufferLease l = Acquire(*c, 100);
    EXPECT_EQ(l.capacity(), 1u << 20);
  }
  EXPECT_EQ(eb.stats().cached, 1u << 20);
  c.reset();
  EXPECT_EQ(system_.budget().stats().used, 0u);
}

TEST_F(BufferPolicyTest, StreamNeverLeasesRequestSizedBuffers) {
  ExportBuffers eb(system_, With(BufferStrategy::kStream));
  auto c = eb.NewConnection();
  EXPECT_FALSE(Acquire(*c, 4096));
  EXPECT_EQ(eb.stats().streamed, 1u);
  EXPECT_EQ(eb.stats().cap_full, 0u);  // the strategy, not a full cap
  BufferLease chunk = c->AcquireChunk();
  EXPECT_EQ(chunk.size(), kStreamChunk);
  EXPECT_EQ(system_.budget().used(), kStreamChunk);  // charged while it fits
}

TEST_F(BufferPolicyTest, RequestLargerThanCapIsRefusedNotQueued) {
  ExportBuffers eb(system_, With(BufferStrategy::kPool, 16 << 20));
  auto c = eb.NewConnection();
  EXPECT_TRUE(Acquire(*c, 16 << 20));
  EXPECT_FALSE(Acquire(*c, (16 << 20) + 1));
  system_.set_memory_cap(8 << 20);
  EXPECT_FALSE(Acquire(*c, 16 << 20));
  EXPECT_TRUE(Acquire(*c, 8 << 20));
  EXPECT_EQ(eb.stats().cap_full, 2u);
  EXPECT_EQ(system_.budget().used(), 0u);
}

TEST_F(BufferPolicyTest, FullCapGivesTheReserveWhichIsNotCharged) {
  system_.set_memory_cap(1 << 20);
  ExportBuffers eb(system_, With(BufferStrategy::kPool));
  auto c1 = eb.NewConnection();
  auto c2 = eb.NewConnection();
  BufferLease all = Acquire(*c1, 1 << 20);
  ASSERT_TRUE(all);
  // c2 gets nothing from the cap, and never waits: its streaming chunk is
  // its reserve, outside the cap but counted.
  EXPECT_FALSE(Acquire(*c2, 4096));
  BufferLease chunk = c2->AcquireChunk();
  ASSERT_TRUE(chunk);
  EXPECT_EQ(chunk.size(), kReserveChunk);
  EXPECT_EQ(chunk.charged(), 0u);
  EXPECT_EQ(system_.reserve_in_use(), kReserveChunk);
  EXPECT_EQ(system_.budget().used(), 1u << 20);
  chunk.Reset();
  EXPECT_EQ(system_.reserve_in_use(), 0u);
  all.Reset();
  // With room again, chunks come from the cap.
  chunk = c2->AcquireChunk();
  EXPECT_EQ(chunk.size(), kStreamChunk);
  EXPECT_EQ(system_.budget().used(), kStreamChunk);
}

TEST_F(BufferPolicyTest, PinnedChargesCountAndComeBack) {
  ExportBuffers eb(system_, With(BufferStrategy::kPool, 3 << 20));
  auto c = eb.NewConnection();
  BufferLease a = c->TryChargePinned(2 << 20);
  ASSERT_TRUE(a.holds());
  EXPECT_FALSE(a);  // no memory of its own
  EXPECT_EQ(eb.stats().in_use, 2u << 20);
  EXPECT_EQ(c->charged(), 2u << 20);
  EXPECT_FALSE(c->TryChargePinned(2 << 20).holds());  // would pass the cap
  a.Reset();
  EXPECT_EQ(eb.stats().in_use, 0u);
  EXPECT_EQ(c->charged(), 0u);
  EXPECT_EQ(system_.budget().used(), 0u);
}

TEST(ConnectionShareTest, OneConnectionGetsAtMostItsShareOfEachCap) {
  BufferSystem system(kMax, 100 << 20, 25);  // 25 MiB per connection
  BufferSettings s;
  s.memory_cap_bytes = 0;
  ExportBuffers eb(system, s);
  auto greedy = eb.NewConnection();
  std::vector<BufferLease> held;
  for (int i = 0; i < 10; ++i) {
    BufferLease l = greedy->TryAcquire(8 << 20);
    if (!l) break;
    held.push_back(std::move(l));
  }
  EXPECT_EQ(held.size(), 3u);  // 24 MiB; a fourth 8 MiB would pass 25
  EXPECT_EQ(greedy->charged(), 24u << 20);
  EXPECT_EQ(eb.stats().cap_full, 1u);
  // Others still get theirs: a few connections cannot take the whole cap.
  auto other = eb.NewConnection();
  EXPECT_TRUE(other->TryAcquire(8 << 20));
  // The export's own cap has its share too.
  BufferSettings capped;
  capped.memory_cap_bytes = 16 << 20;  // 4 MiB per connection
  ExportBuffers small(system, capped);
  auto c = small.NewConnection();
  BufferLease four = c->TryAcquire(4 << 20);
  EXPECT_TRUE(four);
  EXPECT_FALSE(c->TryAcquire(4096));
  held.clear();
  EXPECT_EQ(greedy->charged(), 0u);
}

TEST(ConnectionShareTest, ConnectionMemoryBoundsEachConnectionCapOrNot) {
  BufferSystem system(kMax, 0, 25, 8 << 20);  // no cap, 8 MiB per connection
  ExportBuffers eb(system, BufferSettings{});
  auto c = eb.NewConnection();
  BufferLease a = c->TryAcquire(4 << 20);
  BufferLease b = c->TryAcquire(4 << 20);
  EXPECT_TRUE(a && b);
  EXPECT_FALSE(c->TryAcquire(4096));               // a ninth MiB
  EXPECT_FALSE(c->TryAcquire(32 << 20));           // larger requests stream
  EXPECT_FALSE(c->TryChargePinned(4096).holds());  // pins count too
  EXPECT_EQ(eb.stats().cap_full, 2u);
  auto other = eb.NewConnection();
  EXPECT_TRUE(other->TryAcquire(8 << 20));  // its own 8 MiB
  a.Reset();
  EXPECT_TRUE(c->TryAcquire(4 << 20));
}

TEST_F(BufferPolicyTest, FixedUnderFullCapFallsBackToStreaming) {
  system_.set_memory_cap(kMax);
  ExportBuffers eb(system_, With(BufferStrategy::kFixed));
  auto c1 = eb.NewConnection();
  auto c2 = eb.NewConnection();
  BufferLease held = Acquire(*c1, 4096);
  ASSERT_TRUE(held);
  // c1 holds the whole cap for its life; c2 must not wait forever.
  BufferLease none = Acquire(*c2, 4096);
  EXPECT_FALSE(none);
}

TEST_F(BufferPolicyTest, StrategySwitchFreesHeldBuffers) {
  ExportBuffers eb(system_, With(BufferStrategy::kFixed));
  auto c = eb.NewConnection();
  BufferLease in_flight = Acquire(*c, 4096);
  { BufferLease l = Acquire(*c, 4096); }  // a second held buffer, now idle
  EXPECT_EQ(eb.stats().cached, kMax);
  eb.Update(With(BufferStrategy::kPool));
  {
    BufferLease l = Acquire(*c, 4096);
    EXPECT_EQ(l.capacity(), 4096u);
  }
  EXPECT_EQ(eb.stats().cached, 0u);
  in_flight.Reset();  // finishes with the old strategy, then is freed
  EXPECT_EQ(system_.budget().stats().used, 0u);
}

TEST_F(BufferPolicyTest, IdlePoolBuffersAreReleased) {
  BufferSettings s = With(BufferStrategy::kPool);
  s.pool_idle_release = std::chrono::milliseconds(20);
  ExportBuffers eb(system_, s);
  auto c = eb.NewConnection();
  { BufferLease l = Acquire(*c, 4 << 20); }
  EXPECT_EQ(system_.pool().stats().bytes_cached, 4u << 20);
  system_.ReleaseIdle();
  EXPECT_EQ(system_.pool().stats().bytes_cached,
            4u << 20);  // not idle long enough
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  system_.ReleaseIdle();
  EXPECT_EQ(system_.pool().stats().bytes_cached, 0u);
}

}  // namespace
}  // namespace nbdmgr
