#include "lib/metrics/io_stats.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

namespace nbdmgr {
namespace {

TEST(LatencyBucketTest, BoundsAreInclusiveUpperLimits) {
  EXPECT_EQ(LatencyBucket(0), 0u);
  EXPECT_EQ(LatencyBucket(10'000), 0u);  // exactly 10 us: first bucket
  EXPECT_EQ(LatencyBucket(10'001), 1u);
  EXPECT_EQ(LatencyBucket(1'000'000), 6u);  // 1 ms
  EXPECT_EQ(LatencyBucket(10'000'000'000ull), kLatencyBounds.size() - 1);
  EXPECT_EQ(LatencyBucket(10'000'000'001ull), kLatencyBounds.size());  // +Inf
}

TEST(ConnectionIoStatsTest, RecordsByOpResultLatencyAndBytes) {
  ConnectionIoStats c;
  c.Record(IoOp::kRead, IoResult::kOk, 4096, 20'000);
  c.Record(IoOp::kRead, IoResult::kOk, 65536, 2'000'000);
  c.Record(IoOp::kRead, IoResult::kEinval, 512, 5'000);  // no bytes counted
  c.Record(IoOp::kWrite, IoResult::kOk, 1 << 20, 300'000);
  c.Record(IoOp::kWrite, IoResult::kEnospc, 4096, 1'000);
  c.Record(IoOp::kFlush, IoResult::kOk, 0, 50'000'000);
  c.SetInFlight(3);

  IoCounts n;
  c.AddTo(&n);
  EXPECT_EQ(n.total_requests(IoOp::kRead), 3u);
  EXPECT_EQ(n.requests[0][static_cast<int>(IoResult::kOk)], 2u);
  EXPECT_EQ(n.requests[0][static_cast<int>(IoResult::kEinval)], 1u);
  EXPECT_EQ(n.total_requests(IoOp::kWrite), 2u);
  EXPECT_EQ(n.total_requests(IoOp::kFlush), 1u);
  EXPECT_EQ(n.errors(), 2u);
  EXPECT_EQ(n.bytes_read, 4096u + 65536u);
  EXPECT_EQ(n.bytes_written, 1u << 20);
  EXPECT_EQ(n.in_flight, 3u);
  EXPECT_EQ(n.latency_sum_ns[0], 20'000u + 2'000'000u + 5'000u);
  EXPECT_EQ(n.latency[0][LatencyBucket(20'000)], 1u);
  EXPECT_EQ(n.latency[0][LatencyBucket(2'000'000)], 1u);
  EXPECT_EQ(n.latency[0][0], 1u);  // the 5 us one
}

TEST(ConnectionIoStatsTest, BackendErrorsAreCountedApartFromOtherErrors) {
  ConnectionIoStats c;
  c.Record(IoOp::kWrite, IoResult::kEnospc, 4096, 1'000, true);   // backend
  c.Record(IoOp::kWrite, IoResult::kEnospc, 4096, 1'000, false);  // past end
  c.Record(IoOp::kRead, IoResult::kEio, 512, 1'000, true);
  c.Record(IoOp::kRead, IoResult::kEinval, 512, 1'000, false);
  c.Record(IoOp::kFlush, IoResult::kOk, 0, 1'000, true);  // ok: never one

  IoCounts n;
  c.AddTo(&n);
  constexpr int kW = static_cast<int>(IoOp::kWrite);
  constexpr int kR = static_cast<int>(IoOp::kRead);
  EXPECT_EQ(n.requests[kW][static_cast<int>(IoResult::kEnospc)], 2u);
  EXPECT_EQ(n.backend_errors[kW][static_cast<int>(IoResult::kEnospc)], 1u);
  EXPECT_EQ(n.backend_errors[kR][static_cast<int>(IoResult::kEio)], 1u);
  EXPECT_EQ(n.backend_errors[kR][static_cast<int>(IoResult::kEinval)], 0u);
  EXPECT_EQ(n.backend_errors[static_cast<int>(IoOp::kFlush)][0], 0u);
  EXPECT_EQ(n.errors(), 4u);
  EXPECT_EQ(n.backend_errors_total(), 2u);

  IoCounts sum = n;
  sum += n;
  EXPECT_EQ(sum.backend_errors[kW][static_cast<int>(IoResult::kEnospc)], 2u);
  EXPECT_EQ(sum.backend_errors_total(), 4u);
}

TEST(ExportIoStatsTest, MergesLiveAndFinishedConnections) {
  ExportIoStats e;
  {
    ScopedIoStats a(&e);
    ScopedIoStats b(&e);
    a.get()->Record(IoOp::kWrite, IoResult::kOk, 100, 1);
    b.get()->Record(IoOp::kWrite, IoResult::kOk, 200, 1);
    b.get()->Record(IoOp::kWrite, IoResult::kEio, 200, 1, true);
    a.get()->SetInFlight(2);
    IoCounts live = e.Snapshot();
    EXPECT_EQ(live.bytes_written, 300u);
    EXPECT_EQ(live.total_requests(IoOp::kWrite), 3u);
    EXPECT_EQ(live.backend_errors_total(), 1u);
    EXPECT_EQ(live.in_flight, 2u);
  }
  // Both gone: their counts stay, their in-flight does not.
  IoCounts after = e.Snapshot();
  EXPECT_EQ(after.bytes_written, 300u);
  EXPECT_EQ(after.total_requests(IoOp::kWrite), 3u);
  EXPECT_EQ(after.backend_errors[static_cast<int>(IoOp::kWrite)]
                                [static_cast<int>(IoResult::kEio)],
            1u);
  EXPECT_EQ(after.in_flight, 0u);

  ScopedIoStats c(&e);
  c.get()->Record(IoOp::kTrim, IoResult::kOk, 0, 1);
  EXPECT_EQ(e.Snapshot().total_requests(IoOp::kTrim), 1u);
  EXPECT_EQ(e.Snapshot().bytes_written, 300u);
}

TEST(ExportIoStatsTest, OffMeansNoCounters) {
  ScopedIoStats off(nullptr);
  EXPECT_EQ(off.get(), nullptr);
}

TEST(ExportIoStatsTest, SnapshotsWhileCountingNeverGoBackwards) {
  ExportIoStats e;
  constexpr uint64_t kRequests = 200'000;
  std::atomic<bool> done{false};
  std::thread writer([&] {
    ScopedIoStats s(&e);
    for (uint64_t i = 0; i < kRequests; ++i) {
      s.get()->Record(IoOp::kRead, IoResult::kOk, 1, 1);
    }
    done = true;
  });
  uint64_t last = 0;
  while (!done) {
    uint64_t now = e.Snapshot().bytes_read;
    ASSERT_GE(now, last);
    last = now;
  }
  writer.join();
  EXPECT_EQ(e.Snapshot().bytes_read, kRequests);
  EXPECT_EQ(e.Snapshot().total_requests(IoOp::kRead), kRequests);
}

}  // namespace
}  // namespace nbdmgr
