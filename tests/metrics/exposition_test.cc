#include "lib/metrics/exposition.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "lib/metrics/server_stats.h"

namespace nbdmgr {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

StatsSnapshot Sample() {
  StatsSnapshot s;
  s.daemon.version = "9.9.9";
  s.daemon.server.connections[static_cast<int>(Transport::kUnix)] = 2;
  s.daemon.server.connections_total[static_cast<int>(Transport::kTcp)] = 7;
  s.daemon.server
      .handshake_failures[static_cast<int>(HandshakeFailure::kProtocolError)] =
      3;
  s.daemon.buffers.bytes_cached = 1 << 20;
  s.daemon.resident_memory_bytes = 123456;
  s.daemon.start_time_seconds = 1700000000;
  ExportStats e;
  e.name = "disk0";
  e.backend = "file";
  e.size_bytes = 1 << 30;
  e.clients = 1;
  e.io.requests[static_cast<int>(IoOp::kRead)][0] = 10;
  e.io.requests[static_cast<int>(IoOp::kRead)]
               [static_cast<int>(IoResult::kEio)] = 2;
  e.io.backend_errors[static_cast<int>(IoOp::kRead)]
                     [static_cast<int>(IoResult::kEio)] = 2;
  e.io.latency[static_cast<int>(IoOp::kRead)][0] = 4;  // <= 10us
  e.io.latency[static_cast<int>(IoOp::kRead)][6] = 8;  // <= 1ms
  e.io.latency_sum_ns[static_cast<int>(IoOp::kRead)] = 1'500'000'000;
  e.io.bytes_read = 40960;
  e.buffers.cap_bytes = 256 << 20;
  e.buffers.cap_full = 5;
  s.exports.push_back(e);
  return s;
}

TEST(ExpositionTest, CountersCarryExportOpAndResultLabels) {
  std::string text = ToPrometheusText(Sample());
  EXPECT_THAT(text, HasSubstr("# TYPE nbdmgr_requests_total counter"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_requests_total{export=\"disk0\",op="
                              "\"read\",result=\"ok\"} 10"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_requests_total{export=\"disk0\",op="
                              "\"read\",result=\"EIO\"} 2"));
  // Zero error results are left out; zero ok results are kept.
  EXPECT_THAT(text, Not(HasSubstr("result=\"EINVAL\"")));
  EXPECT_THAT(text, HasSubstr("nbdmgr_requests_total{export=\"disk0\",op="
                              "\"write\",result=\"ok\"} 0"));
  EXPECT_THAT(text,
              HasSubstr("nbdmgr_read_bytes_total{export=\"disk0\"} 40960"));
  EXPECT_THAT(text,
              HasSubstr("nbdmgr_buffer_cap_bytes{export=\"disk0\"} 268435456"));
  EXPECT_THAT(text,
              HasSubstr("nbdmgr_buffer_cap_full_total{export=\"disk0\"} 5"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_export_info{export=\"disk0\",backend="
                              "\"file\",status=\"active\"} 1"));
}

TEST(ExpositionTest, BackendErrorsOnlyWhereTheyOccurred) {
  StatsSnapshot s = Sample();
  s.exports[0].io.requests[static_cast<int>(IoOp::kWrite)]
                          [static_cast<int>(IoResult::kEperm)] = 3;  // client
  ExportStats failed;
  failed.name = "broken";
  failed.failed = true;
  s.exports.push_back(failed);
  std::string text = ToPrometheusText(s);
  EXPECT_THAT(text, HasSubstr("# TYPE nbdmgr_backend_errors_total counter"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_backend_errors_total{export=\"disk0\","
                              "op=\"read\",error=\"EIO\"} 2"));
  // One series: no zero ones, none for the client's EPERMs or the failed
  // export.
  size_t series = 0;
  for (size_t at = text.find("\nnbdmgr_backend_errors_total{");
       at != std::string::npos;
       at = text.find("\nnbdmgr_backend_errors_total{", at + 1)) {
    ++series;
  }
  EXPECT_EQ(series, 1u);
  // The requests family is unchanged.
  EXPECT_THAT(text, HasSubstr("nbdmgr_requests_total{export=\"disk0\",op="
                              "\"write\",result=\"EPERM\"} 3"));
}

TEST(ExpositionTest, LatencyIsACumulativeHistogramInSeconds) {
  std::string text = ToPrometheusText(Sample());
  EXPECT_THAT(text,
              HasSubstr("# TYPE nbdmgr_request_duration_seconds histogram"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_request_duration_seconds_bucket{export="
                              "\"disk0\",op=\"read\",le=\"1e-05\"} 4"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_request_duration_seconds_bucket{export="
                              "\"disk0\",op=\"read\",le=\"0.001\"} 12"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_request_duration_seconds_bucket{export="
                              "\"disk0\",op=\"read\",le=\"+Inf\"} 12"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_request_duration_seconds_sum{export="
                              "\"disk0\",op=\"read\"} 1.5"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_request_duration_seconds_count{export="
                              "\"disk0\",op=\"read\"} 12"));
}

TEST(ExpositionTest, DaemonAndProcessFamilies) {
  std::string text = ToPrometheusText(Sample());
  EXPECT_THAT(text, HasSubstr("nbdmgr_connections{transport=\"unix\"} 2"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_connections_total{transport=\"tcp\"} 7"));
  EXPECT_THAT(
      text,
      HasSubstr(
          "nbdmgr_handshake_failures_total{reason=\"protocol_error\"} 3"));
  EXPECT_THAT(text,
              HasSubstr("nbdmgr_daemon_buffer_pool_cached_bytes 1048576"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_build_info{version=\"9.9.9\"} 1"));
  EXPECT_THAT(text, HasSubstr("process_resident_memory_bytes 123456"));
  EXPECT_THAT(text, HasSubstr("process_start_time_seconds 1700000000"));
}

TEST(ExpositionTest, QosSeriesOnlyForLimitedExportsAndGroups) {
  StatsSnapshot s = Sample();  // disk0: unlimited, never throttled
  ExportStats limited;
  limited.name = "vm1";
  limited.backend = "memory";
  limited.qos.limited = true;
  limited.qos.group = "tenant1";
  limited.qos.throttled_requests = 42;
  limited.qos.throttled_ns = 2'500'000'000;
  limited.qos.waiting = 3;
  s.exports.push_back(limited);
  ExportStats was_limited;  // limits removed; its counters stay
  was_limited.name = "vm2";
  was_limited.backend = "memory";
  was_limited.qos.throttled_requests = 1;
  was_limited.qos.throttled_ns = 1'000'000;
  s.exports.push_back(was_limited);
  ExportStats failed;
  failed.name = "vm3";
  failed.failed = true;
  failed.qos.limited = true;
  s.exports.push_back(failed);
  QosGroupStats g;
  g.name = "tenant1";
  g.members = 2;
  g.qos.limited = true;
  g.qos.throttled_requests = 7;
  g.qos.throttled_ns = 500'000'000;
  g.qos.waiting = 1;
  s.qos_groups.push_back(g);
  const std::string text = ToPrometheusText(s);
  EXPECT_THAT(text, HasSubstr("# TYPE nbdmgr_qos_throttled_seconds_total "
                              "counter"));
  EXPECT_THAT(text, HasSubstr("# TYPE nbdmgr_qos_waiting_requests gauge"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_qos_throttled_seconds_total{export="
                              "\"vm1\"} 2.5"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_qos_throttled_requests_total{export="
                              "\"vm1\"} 42"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_qos_waiting_requests{export=\"vm1\"} 3"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_qos_throttled_seconds_total{export="
                              "\"vm2\"} 0.001"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_qos_throttled_requests_total{export="
                              "\"vm2\"} 1"));
  EXPECT_THAT(text, Not(HasSubstr("nbdmgr_qos_throttled_requests_total{"
                                  "export=\"disk0\"}")));
  EXPECT_THAT(text, Not(HasSubstr("nbdmgr_qos_waiting_requests{export="
                                  "\"disk0\"}")));
  EXPECT_THAT(text, Not(HasSubstr("nbdmgr_qos_throttled_requests_total{"
                                  "export=\"vm3\"}")));
  EXPECT_THAT(text, HasSubstr("# TYPE nbdmgr_qos_group_throttled_seconds_total"
                              " counter"));
  EXPECT_THAT(text, HasSubstr("# TYPE nbdmgr_qos_group_members gauge"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_qos_group_throttled_seconds_total{group="
                              "\"tenant1\"} 0.5"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_qos_group_throttled_requests_total{"
                              "group=\"tenant1\"} 7"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_qos_group_waiting_requests{group="
                              "\"tenant1\"} 1"));
  EXPECT_THAT(text, HasSubstr("nbdmgr_qos_group_members{group=\"tenant1\"} 2"));
}

TEST(HandshakeFailureTest, ReasonFollowsTheStatusCode) {
  EXPECT_EQ(HandshakeFailureFromStatus(absl::CancelledError("abort")),
            HandshakeFailure::kClientClosed);
  EXPECT_EQ(HandshakeFailureFromStatus(absl::InvalidArgumentError("magic")),
            HandshakeFailure::kProtocolError);
  EXPECT_EQ(HandshakeFailureFromStatus(absl::ResourceExhaustedError("opts")),
            HandshakeFailure::kLimit);
  EXPECT_EQ(HandshakeFailureFromStatus(absl::UnavailableError("reset")),
            HandshakeFailure::kIoError);
}

TEST(ServerStatsTest, CountsOpenAndTotalByTransport) {
  ServerStats s;
  s.Opened(Transport::kTcp);
  s.Opened(Transport::kTcp);
  s.Opened(Transport::kUnix);
  s.Closed(Transport::kTcp);
  s.HandshakeFailed(HandshakeFailure::kTimeout);
  ServerCounts c = s.Snapshot();
  EXPECT_EQ(c.connections[0], 1u);
  EXPECT_EQ(c.connections_total[0], 2u);
  EXPECT_EQ(c.connections[1], 1u);
  EXPECT_EQ(c.handshake_failures[static_cast<int>(HandshakeFailure::kTimeout)],
            1u);
}

}  // namespace
}  // namespace nbdmgr
