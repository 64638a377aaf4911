#include "lib/metrics/exposition.h"

#include <deque>
#include <iterator>
#include <utility>

#include "prometheus/text_serializer.h"

namespace nbdmgr {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;
using Labels = std::vector<ClientMetric::Label>;

class Builder {
 public:
  MetricFamily& Family(std::string name, std::string help, MetricType type) {
    families_.push_back(
        MetricFamily{std::move(name), std::move(help), type, {}});
    return families_.back();
  }
  static void Add(MetricFamily& f, Labels labels, double value) {
    ClientMetric m;
    m.label = std::move(labels);
    switch (f.type) {
      case MetricType::Counter:
        m.counter.value = value;
        break;
      case MetricType::Gauge:
        m.gauge.value = value;
        break;
      default:
        m.untyped.value = value;
    }
    f.metric.push_back(std::move(m));
  }
  std::vector<MetricFamily> Take() {
    return std::vector<MetricFamily>(std::make_move_iterator(families_.begin()),
                                     std::make_move_iterator(families_.end()));
  }

 private:
  // A deque: references returned by Family() stay valid as more are added.
  std::deque<MetricFamily> families_;
};

// One gauge or counter family with a sample per export.
template <typename Fn>
void PerExport(Builder& b, const StatsSnapshot& s, std::string name,
               std::string help, MetricType type, Fn value) {
  MetricFamily& f = b.Family(std::move(name), std::move(help), type);
  for (const ExportStats& e : s.exports) {
    if (e.failed) continue;  // not served: only nbdmgr_export_info
    Builder::Add(f, {{"export", e.name}}, static_cast<double>(value(e)));
  }
}

void AddRequestFamilies(Builder& b, const StatsSnapshot& s) {
  MetricFamily& req = b.Family(
      "nbdmgr_requests_total",
      "NBD requests answered, by export, operation and result (ok or the "
      "NBD error sent).",
      MetricType::Counter);
  MetricFamily& lat = b.Family(
      "nbdmgr_request_duration_seconds",
      "Time from reading a request's header to writing its whole reply.",
      MetricType::Histogram);
  for (const ExportStats& e : s.exports) {
    if (e.failed) continue;
    for (size_t op = 0; op < kNumIoOps; ++op) {
      const std::string op_name(NameOf(static_cast<IoOp>(op)));
      uint64_t total = 0;
      for (size_t r = 0; r < kNumIoResults; ++r) {
        const uint64_t n = e.io.requests[op][r];
        total += n;
        // Zero results other than ok are left out to keep series few.
        if (n == 0 && r != 0) continue;
        Builder::Add(
            req,
            {{"export", e.name},
             {"op", op_name},
             {"result", std::string(NameOf(static_cast<IoResult>(r)))}},
            static_cast<double>(n));
      }
      ClientMetric m;
      m.label = {{"export", e.name}, {"op", op_name}};
      m.histogram.sample_count = total;
      m.histogram.sample_sum =
          static_cast<double>(e.io.latency_sum_ns[op]) / 1e9;
      uint64_t cumulative = 0;
      for (size_t i = 0; i < kNumLatencyBuckets; ++i) {
        cumulative += e.io.latency[op][i];
        ClientMetric::Bucket bucket;
        bucket.cumulative_count = cumulative;
        bucket.upper_bound = LatencyBucketBound(i);
        m.histogram.bucket.push_back(bucket);
      }
      lat.metric.push_back(std::move(m));
    }
  }
  MetricFamily& backend = b.Family(
      "nbdmgr_backend_errors_total",
      "Requests that failed because the export's backend returned an error, "
      "by operation and the NBD error sent.",
      MetricType::Counter);
  for (const ExportStats& e : s.exports) {
    if (e.failed) continue;
    for (size_t op = 0; op < kNumIoOps; ++op) {
      for (size_t r = 1; r < kNumIoResults; ++r) {
        const uint64_t n = e.io.backend_errors[op][r];
        if (n == 0) continue;  // only errors that happened, as above
        Builder::Add(backend,
                     {{"export", e.name},
                      {"op", std::string(NameOf(static_cast<IoOp>(op)))},
                      {"error", std::string(NameOf(static_cast<IoResult>(r)))}},
                     static_cast<double>(n));
      }
    }
  }
  MetricFamily& dirty = b.Family(
      "nbdmgr_bitmap_dirty_bytes",
      "Bytes a dirty bitmap marks as changed (what an incremental backup "
      "copies), by export and bitmap; 0 for an inconsistent bitmap.",
      MetricType::Gauge);
  MetricFamily& consistent =
      b.Family("nbdmgr_bitmap_consistent",
               "1 for a dirty bitmap that can be trusted, 0 for one made "
               "inconsistent by a crash (a full backup is needed).",
               MetricType::Gauge);
  MetricFamily& bits =
      b.Family("nbdmgr_bitmap_memory_bytes",
               "Memory a dirty bitmap's bits take.", MetricType::Gauge);
  for (const ExportStats& e : s.exports) {
    for (const BitmapStats& bm : e.bitmaps) {
      const Labels l = {{"export", e.name}, {"bitmap", bm.name}};
      Builder::Add(dirty, l, static_cast<double>(bm.dirty_bytes));
      Builder::Add(consistent, l, bm.consistent ? 1.0 : 0.0);
      Builder::Add(bits, l, static_cast<double>(bm.memory_bytes));
    }
  }
  MetricFamily& ov_alloc = b.Family(
      "nbdmgr_overlay_allocated_bytes",
      "Bytes of an overlay's own clusters: data it wrote (state=data) and "
      "ranges it trimmed or zeroed (state=zero); the rest reads its base.",
      MetricType::Gauge);
  MetricFamily& ov_copy = b.Family(
      "nbdmgr_overlay_copy_ups_total",
      "Partial first writes of an overlay's clusters, which copied the rest "
      "of the cluster from the base.",
      MetricType::Counter);
  for (const ExportStats& e : s.exports) {
    if (!e.overlay) continue;
    Builder::Add(ov_alloc, {{"export", e.name}, {"state", "data"}},
                 static_cast<double>(e.overlay_allocated_bytes));
    Builder::Add(ov_alloc, {{"export", e.name}, {"state", "zero"}},
                 static_cast<double>(e.overlay_zero_bytes));
    Builder::Add(ov_copy, {{"export", e.name}},
                 static_cast<double>(e.overlay_copy_ups));
  }
  PerExport(b, s, "nbdmgr_read_bytes_total",
            "Payload bytes of successful READ requests.", MetricType::Counter,
            [](const ExportStats& e) { return e.io.bytes_read; });
  PerExport(b, s, "nbdmgr_written_bytes_total",
            "Payload bytes of successful WRITE requests.", MetricType::Counter,
            [](const ExportStats& e) { return e.io.bytes_written; });
  PerExport(b, s, "nbdmgr_requests_in_flight",
            "Requests read from clients and not yet answered.",
            MetricType::Gauge,
            [](const ExportStats& e) { return e.io.in_flight; });
}

void AddExportFamilies(Builder& b, const StatsSnapshot& s) {
  MetricFamily& info =
      b.Family("nbdmgr_export_info",
               "1 for every export, with its backend and status (active, "
               "draining, or failed: not served, see the log or nbdctl get).",
               MetricType::Gauge);
  for (const ExportStats& e : s.exports) {
    Builder::Add(info,
                 {{"export", e.name},
                  {"backend", e.backend},
                  {"status", e.failed     ? "failed"
                             : e.draining ? "draining"
                                          : "active"}},
                 1);
  }
  PerExport(b, s, "nbdmgr_export_size_bytes", "Size of the export.",
            MetricType::Gauge,
            [](const ExportStats& e) { return e.size_bytes; });
  PerExport(b, s, "nbdmgr_export_clients",
            "Clients connected to the export (in transmission).",
            MetricType::Gauge, [](const ExportStats& e) { return e.clients; });
  PerExport(b, s, "nbdmgr_buffer_bytes_in_use",
            "Request-buffer bytes charged to the export now.",
            MetricType::Gauge,
            [](const ExportStats& e) { return e.buffers.bytes_in_use; });
  PerExport(b, s, "nbdmgr_buffer_bytes_idle",
            "Request-buffer bytes held idle by the export's connections "
            "(fixed and grow strategies).",
            MetricType::Gauge,
            [](const ExportStats& e) { return e.buffers.bytes_cached; });
  PerExport(b, s, "nbdmgr_buffer_cap_bytes",
            "The export's request-buffer cap (0: none).", MetricType::Gauge,
            [](const ExportStats& e) { return e.buffers.cap_bytes; });
  PerExport(b, s, "nbdmgr_buffer_cap_full_total",
            "Requests of the export that found a memory cap (the export's, "
            "the daemon's or their connection's share) full and streamed "
            "through the connection's reserve instead.",
            MetricType::Counter,
            [](const ExportStats& e) { return e.buffers.cap_full; });
  PerExport(b, s, "nbdmgr_buffer_allocations_total",
            "Request buffers the export obtained from the OS (new memory).",
            MetricType::Counter,
            [](const ExportStats& e) { return e.buffers.allocations; });
  PerExport(b, s, "nbdmgr_buffer_reuses_total",
            "Requests of the export served by an existing buffer.",
            MetricType::Counter,
            [](const ExportStats& e) { return e.buffers.reuses; });
  PerExport(b, s, "nbdmgr_buffer_streamed_requests_total",
            "Requests of the export moved in chunks without a request-sized "
            "buffer (stream strategy, or too large for a cap).",
            MetricType::Counter,
            [](const ExportStats& e) { return e.buffers.streamed; });
}

// Exports with QoS limits (or that had them: their counters stay) and QoS
// groups; unlimited exports get no series.
void AddQosFamilies(Builder& b, const StatsSnapshot& s) {
  MetricFamily& seconds = b.Family(
      "nbdmgr_qos_throttled_seconds_total",
      "Time the export's requests waited for QoS limits (its own and its "
      "group's), in total; requests wait, never fail.",
      MetricType::Counter);
  MetricFamily& requests = b.Family(
      "nbdmgr_qos_throttled_requests_total",
      "Requests of the export that waited for QoS limits (its own or its "
      "group's).",
      MetricType::Counter);
  MetricFamily& waiting =
      b.Family("nbdmgr_qos_waiting_requests",
               "Requests of the export waiting for its own QoS limits now.",
               MetricType::Gauge);
  for (const ExportStats& e : s.exports) {
    if (e.failed) continue;
    const QosCounts& q = e.qos;
    if (!q.limited && q.throttled_requests == 0 && q.throttled_ns == 0) {
      continue;
    }
    const Labels l = {{"export", e.name}};
    Builder::Add(seconds, l, static_cast<double>(q.throttled_ns) / 1e9);
    Builder::Add(requests, l, static_cast<double>(q.throttled_requests));
    Builder::Add(waiting, l, static_cast<double>(q.waiting));
  }
  MetricFamily& g_seconds =
      b.Family("nbdmgr_qos_group_throttled_seconds_total",
               "Time requests waited for the QoS group's limits, in total "
               "over its members.",
               MetricType::Counter);
  MetricFamily& g_requests = b.Family(
      "nbdmgr_qos_group_throttled_requests_total",
      "Requests of the QoS group's members that waited for its limits.",
      MetricType::Counter);
  MetricFamily& g_waiting = b.Family(
      "nbdmgr_qos_group_waiting_requests",
      "Requests waiting for the QoS group's limits now.", MetricType::Gauge);
  MetricFamily& g_members =
      b.Family("nbdmgr_qos_group_members", "Served exports in the QoS group.",
               MetricType::Gauge);
  for (const QosGroupStats& g : s.qos_groups) {
    const Labels l = {{"group", g.name}};
    Builder::Add(g_seconds, l, static_cast<double>(g.qos.throttled_ns) / 1e9);
    Builder::Add(g_requests, l, static_cast<double>(g.qos.throttled_requests));
    Builder::Add(g_waiting, l, static_cast<double>(g.qos.waiting));
    Builder::Add(g_members, l, static_cast<double>(g.members));
  }
}

void AddDaemonFamilies(Builder& b, const StatsSnapshot& s) {
  const DaemonStats& d = s.daemon;
  MetricFamily& conns =
      b.Family("nbdmgr_connections", "Open NBD connections, by transport.",
               MetricType::Gauge);
  MetricFamily& conns_total =
      b.Family("nbdmgr_connections_total",
               "NBD connections accepted, by transport.", MetricType::Counter);
  for (size_t t = 0; t < kNumTransports; ++t) {
    Labels l = {{"transport", std::string(NameOf(static_cast<Transport>(t)))}};
    Builder::Add(conns, l, static_cast<double>(d.server.connections[t]));
    Builder::Add(conns_total, l,
                 static_cast<double>(d.server.connections_total[t]));
  }
  MetricFamily& hs =
      b.Family("nbdmgr_handshake_failures_total",
               "Connections that ended before choosing an export, by reason.",
               MetricType::Counter);
  for (size_t r = 0; r < kNumHandshakeFailures; ++r) {
    Builder::Add(
        hs, {{"reason", std::string(NameOf(static_cast<HandshakeFailure>(r)))}},
        static_cast<double>(d.server.handshake_failures[r]));
  }
  MetricFamily& refused =
      b.Family("nbdmgr_limit_refusals_total",
               "Clients refused or disconnected by a limit, by reason.",
               MetricType::Counter);
  for (size_t r = 0; r < kNumRefusals; ++r) {
    Builder::Add(refused,
                 {{"reason", std::string(NameOf(static_cast<Refusal>(r)))}},
                 static_cast<double>(d.server.refusals[r]));
  }
  auto gauge = [&b](std::string name, std::string help, double v) {
    Builder::Add(b.Family(std::move(name), std::move(help), MetricType::Gauge),
                 {}, v);
  };
  auto counter = [&b](std::string name, std::string help, double v) {
    Builder::Add(
        b.Family(std::move(name), std::move(help), MetricType::Counter), {}, v);
  };
  gauge("nbdmgr_daemon_buffer_bytes_in_use",
        "Request-buffer bytes in use, all exports.",
        static_cast<double>(d.buffers.bytes_in_use));
  gauge("nbdmgr_daemon_buffer_pool_cached_bytes",
        "Idle bytes cached in the shared buffer pool.",
        static_cast<double>(d.buffers.bytes_cached));
  gauge("nbdmgr_daemon_buffer_cap_bytes",
        "The daemon-wide request-buffer cap (0: none).",
        static_cast<double>(d.buffers.cap_bytes));
  counter("nbdmgr_daemon_buffer_cap_full_total",
          "Charges the daemon-wide cap refused (the request streamed "
          "instead).",
          static_cast<double>(d.buffers.cap_full));
  gauge("nbdmgr_daemon_buffer_reserve_bytes",
        "Connection reserve chunks in use (outside the caps; at most 2 x "
        "64 KiB per connection).",
        static_cast<double>(d.buffers.reserve_bytes));
  gauge("nbdmgr_daemon_tls_buffer_bytes",
        "Fixed buffers of TLS connections (outside the caps; about 240 KiB "
        "per TLS connection).",
        static_cast<double>(d.buffers.tls_bytes));
  Builder::Add(
      b.Family("nbdmgr_build_info", "1, labelled with the nbdmgrd version.",
               MetricType::Gauge),
      {{"version", d.version}}, 1);
  gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
        static_cast<double>(d.resident_memory_bytes));
  gauge("process_open_fds", "Number of open file descriptors.",
        static_cast<double>(d.open_fds));
  gauge("process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        d.start_time_seconds);
}

}  // namespace

std::vector<MetricFamily> ToMetricFamilies(const StatsSnapshot& s) {
  Builder b;
  AddRequestFamilies(b, s);
  AddExportFamilies(b, s);
  AddQosFamilies(b, s);
  AddDaemonFamilies(b, s);
  return b.Take();
}

std::string ToPrometheusText(const StatsSnapshot& s) {
  return prometheus::TextSerializer().Serialize(ToMetricFamilies(s));
}

}  // namespace nbdmgr
