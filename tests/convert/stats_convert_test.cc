#include "lib/convert/stats_convert.h"

#include <gtest/gtest.h>

#include <cstring>

namespace nbdmgr {
namespace {

TEST(StatsConvertTest, RoundTripKeepsEveryCounter) {
  StatsSnapshot s;
  s.time_ns = 1'700'000'000'123'456'789;
  s.daemon.version = "1.2.3";
  s.daemon.server.connections[1] = 4;
  s.daemon.server.connections_total[0] = 9;
  s.daemon.server.handshake_failures[2] = 1;
  s.daemon.buffers = {100, 200, 300, 4, 65536};
  s.daemon.buffers.tls_bytes = 250880;
  s.daemon.resident_memory_bytes = 777;
  s.daemon.open_fds = 12;
  s.daemon.start_time_seconds = 1'700'000'000;
  ExportStats e;
  e.name = "vm1";
  e.backend = "memory";
  e.draining = true;
  e.size_bytes = 1 << 20;
  e.clients = 3;
  for (size_t op = 0; op < kNumIoOps; ++op) {
    for (size_t r = 0; r < kNumIoResults; ++r)
      e.io.requests[op][r] = op * 100 + r;
    // Some backend errors, some zero (left out of the map).
    for (size_t r = 1; r < kNumIoResults; r += 2)
      e.io.backend_errors[op][r] = op * 10 + r;
    for (size_t b = 0; b < kNumLatencyBuckets; ++b)
      e.io.latency[op][b] = b + op;
    e.io.latency_sum_ns[op] = 123'000 * (op + 1);
  }
  e.io.bytes_read = 11;
  e.io.bytes_written = 22;
  e.io.in_flight = 5;
  e.buffers = {1, 2, 3, 4, 5, 6, 7, 8};
  s.exports.push_back(e);

  v1::Stats p = StatsToProto(s);
  EXPECT_EQ(p.exports(0).name(), "exports/vm1");
  EXPECT_EQ(p.exports(0).operations(0).op(), "read");
  EXPECT_EQ(p.exports(0).operations(0).results().at("EIO"), 2u);
  EXPECT_EQ(p.exports(0).operations(2).backend_errors().at("EPERM"), 21u);
  EXPECT_EQ(p.exports(0).operations(2).backend_errors().count("EIO"), 0u);
  EXPECT_EQ(p.exports(0).operations(2).backend_errors().count("ok"), 0u);
  EXPECT_EQ(p.daemon().connections().at("unix"), 4u);

  StatsSnapshot back = StatsFromProto(p);
  EXPECT_EQ(back.time_ns, s.time_ns);
  EXPECT_EQ(back.daemon.version, "1.2.3");
  EXPECT_EQ(back.daemon.server.connections[1], 4u);
  EXPECT_EQ(back.daemon.server.connections_total[0], 9u);
  EXPECT_EQ(back.daemon.server.handshake_failures[2], 1u);
  EXPECT_EQ(back.daemon.buffers.bytes_cached, 200u);
  EXPECT_EQ(back.daemon.buffers.reserve_bytes, 65536u);
  EXPECT_EQ(back.daemon.buffers.tls_bytes, 250880u);
  EXPECT_EQ(back.daemon.open_fds, 12u);
  ASSERT_EQ(back.exports.size(), 1u);
  const ExportStats& b = back.exports[0];
  EXPECT_EQ(b.name, "vm1");
  EXPECT_TRUE(b.draining);
  EXPECT_EQ(b.clients, 3u);
  EXPECT_EQ(std::memcmp(b.io.requests, e.io.requests, sizeof e.io.requests), 0);
  EXPECT_EQ(std::memcmp(b.io.backend_errors, e.io.backend_errors,
                        sizeof e.io.backend_errors),
            0);
  EXPECT_EQ(std::memcmp(b.io.latency, e.io.latency, sizeof e.io.latency), 0);
  EXPECT_EQ(b.io.latency_sum_ns[3], e.io.latency_sum_ns[3]);
  EXPECT_EQ(b.io.bytes_written, 22u);
  EXPECT_EQ(b.io.in_flight, 5u);
  EXPECT_EQ(b.buffers.cap_full, 4u);
  EXPECT_EQ(b.buffers.reserve_bytes, 5u);
  EXPECT_EQ(b.buffers.allocations, 6u);
  EXPECT_EQ(b.buffers.reuses, 7u);
  EXPECT_EQ(b.buffers.streamed, 8u);
}

TEST(StatsConvertTest, QosCountersRoundTrip) {
  StatsSnapshot s;
  ExportStats limited;
  limited.name = "vm1";
  limited.qos.limited = true;
  limited.qos.group = "tenant1";
  limited.qos.throttled_requests = 42;
  limited.qos.throttled_ns = 2'500'000'001;
  limited.qos.waiting = 3;
  s.exports.push_back(limited);
  ExportStats plain;
  plain.name = "vm2";
  s.exports.push_back(plain);
  QosGroupStats g;
  g.name = "tenant1";
  g.members = 2;
  g.qos.limited = true;
  g.qos.throttled_requests = 7;
  g.qos.throttled_ns = 500'000'000;
  g.qos.waiting = 1;
  s.qos_groups.push_back(g);

  v1::Stats p = StatsToProto(s);
  const v1::QosStats& q = p.exports(0).qos();
  EXPECT_TRUE(q.limited());
  EXPECT_EQ(q.group(), "qosGroups/tenant1");
  EXPECT_EQ(q.throttled_requests(), 42u);
  EXPECT_DOUBLE_EQ(q.throttled_seconds(), 2.500000001);  // from nanoseconds
  EXPECT_EQ(q.waiting_requests(), 3u);
  EXPECT_FALSE(p.exports(1).qos().limited());
  EXPECT_EQ(p.exports(1).qos().group(), "");
  ASSERT_EQ(p.qos_groups_size(), 1);
  EXPECT_EQ(p.qos_groups(0).name(), "qosGroups/tenant1");
  EXPECT_EQ(p.qos_groups(0).members(), 2u);
  EXPECT_EQ(p.qos_groups(0).throttled_requests(), 7u);
  EXPECT_DOUBLE_EQ(p.qos_groups(0).throttled_seconds(), 0.5);
  EXPECT_EQ(p.qos_groups(0).waiting_requests(), 1u);

  StatsSnapshot back = StatsFromProto(p);
  ASSERT_EQ(back.exports.size(), 2u);
  EXPECT_TRUE(back.exports[0].qos.limited);
  EXPECT_EQ(back.exports[0].qos.group, "tenant1");
  EXPECT_EQ(back.exports[0].qos.throttled_requests, 42u);
  EXPECT_EQ(back.exports[0].qos.throttled_ns, 2'500'000'001u);
  EXPECT_EQ(back.exports[0].qos.waiting, 3u);
  EXPECT_FALSE(back.exports[1].qos.limited);
  ASSERT_EQ(back.qos_groups.size(), 1u);
  EXPECT_EQ(back.qos_groups[0].name, "tenant1");
  EXPECT_EQ(back.qos_groups[0].members, 2u);
  EXPECT_TRUE(back.qos_groups[0].qos.limited);
  EXPECT_EQ(back.qos_groups[0].qos.throttled_requests, 7u);
  EXPECT_EQ(back.qos_groups[0].qos.throttled_ns, 500'000'000u);
  EXPECT_EQ(back.qos_groups[0].qos.waiting, 1u);
}

TEST(StatsConvertTest, UnknownNamesAreSkipped) {
  v1::Stats p;
  (*p.mutable_daemon()->mutable_connections())["carrier-pigeon"] = 1;
  v1::ExportStats* e = p.add_exports();
  e->set_name("exports/x");
  v1::OperationStats* o = e->add_operations();
  o->set_op("defragment");
  (*o->mutable_results())["ok"] = 5;
  StatsSnapshot s = StatsFromProto(p);
  EXPECT_EQ(s.daemon.server.connections[0] + s.daemon.server.connections[1],
            0u);
  ASSERT_EQ(s.exports.size(), 1u);
  EXPECT_EQ(s.exports[0].io.errors(), 0u);
  uint64_t total = 0;
  for (size_t op = 0; op < kNumIoOps; ++op) {
    total += s.exports[0].io.total_requests(static_cast<IoOp>(op));
  }
  EXPECT_EQ(total, 0u);
}

}  // namespace
}  // namespace nbdmgr
