#include "lib/buffer/buffer_policy.h"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

namespace nbdmgr {
namespace {

namespace asio = boost::asio;
constexpr size_t kMax = 32 << 20;

class BufferPolicyTest : public ::testing::Test {
 protected:
  BufferLease Acquire(ConnectionBuffers& c, size_t n) {
    auto f = asio::co_spawn(ioc_, c.Acquire(n), asio::use_future);
    ioc_.run();
    ioc_.restart();
    return f.get();
  }
  BufferSettings With(BufferStrategy s, uint64_t cap = 0) {
    BufferSettings b;
    b.strategy = s;
    b.memory_cap_bytes = cap;
    return b;
  }
  asio::io_context ioc_;
  BufferSystem system_{kMax};
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
  EXPECT_TRUE(c->ShouldStream(4096));
  BufferLease chunk = c->AcquireChunk();
  EXPECT_EQ(chunk.size(), kStreamChunk);
  EXPECT_EQ(system_.budget().stats().used, 0u);  // chunks are not charged
}

TEST_F(BufferPolicyTest, RequestLargerThanCapStreams) {
  ExportBuffers eb(system_, With(BufferStrategy::kPool, 16 << 20));
  auto c = eb.NewConnection();
  EXPECT_FALSE(c->ShouldStream(16 << 20));
  EXPECT_TRUE(c->ShouldStream((16 << 20) + 1));
  system_.set_memory_cap(8 << 20);
  EXPECT_TRUE(c->ShouldStream(16 << 20));
  EXPECT_FALSE(c->ShouldStream(8 << 20));
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
