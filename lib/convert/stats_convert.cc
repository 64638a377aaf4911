#include "lib/convert/stats_convert.h"

#include <algorithm>
#include <cmath>

#include "google/protobuf/util/time_util.h"
#include "lib/convert/proto_convert.h"

namespace nbdmgr {
namespace {

using google::protobuf::util::TimeUtil;

v1::BufferStats BuffersToProto(const BufferCounts& b) {
  v1::BufferStats p;
  p.set_bytes_in_use(b.bytes_in_use);
  p.set_bytes_cached(b.bytes_cached);
  p.set_cap_bytes(b.cap_bytes);
  p.set_cap_full(b.cap_full);
  p.set_reserve_bytes(b.reserve_bytes);
  p.set_tls_bytes(b.tls_bytes);
  p.set_allocations(b.allocations);
  p.set_reuses(b.reuses);
  p.set_streamed(b.streamed);
  return p;
}

BufferCounts BuffersFromProto(const v1::BufferStats& p) {
  return BufferCounts{p.bytes_in_use(), p.bytes_cached(),  p.cap_bytes(),
                      p.cap_full(),     p.reserve_bytes(), p.allocations(),
                      p.reuses(),       p.streamed(),      p.tls_bytes()};
}

// Index of `name` among NameOf(Enum(0..n-1)), or n.
template <typename Enum>
size_t IndexOf(std::string_view name, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (NameOf(static_cast<Enum>(i)) == name) return i;
  }
  return n;
}

template <typename Enum, typename Map>
void CountsToMap(const uint64_t* counts, size_t n, Map* out) {
  for (size_t i = 0; i < n; ++i) {
    (*out)[std::string(NameOf(static_cast<Enum>(i)))] = counts[i];
  }
}

// Like CountsToMap, only the nonzero counts.
template <typename Enum, typename Map>
void NonzeroCountsToMap(const uint64_t* counts, size_t n, Map* out) {
  for (size_t i = 0; i < n; ++i) {
    if (counts[i] != 0) {
      (*out)[std::string(NameOf(static_cast<Enum>(i)))] = counts[i];
    }
  }
}

template <typename Enum, typename Map>
void CountsFromMap(const Map& m, size_t n, uint64_t* counts) {
  for (const auto& [name, v] : m) {
    size_t i = IndexOf<Enum>(name, n);
    if (i < n) counts[i] = v;
  }
}

void QosToProto(const QosCounts& q, v1::QosStats* p) {
  p->set_limited(q.limited);
  if (!q.group.empty()) p->set_group(QosGroupResourceName(q.group));
  p->set_throttled_requests(q.throttled_requests);
  p->set_throttled_seconds(static_cast<double>(q.throttled_ns) / 1e9);
  p->set_waiting_requests(q.waiting);
}

// The group id of "qosGroups/{group}" (anything else as it is).
std::string GroupIdOf(const std::string& name) {
  absl::StatusOr<std::string> id = QosGroupIdFromName(name);
  return id.ok() ? *id : name;
}

QosCounts QosFromProto(bool limited, const std::string& group,
                       uint64_t throttled_requests, double throttled_seconds,
                       uint64_t waiting) {
  QosCounts q;
  q.limited = limited;
  q.group = group.empty() ? "" : GroupIdOf(group);
  q.throttled_requests = throttled_requests;
  q.throttled_ns = static_cast<uint64_t>(
      std::llround(std::max(0.0, throttled_seconds) * 1e9));
  q.waiting = waiting;
  return q;
}

}  // namespace

v1::Stats StatsToProto(const StatsSnapshot& s) {
  v1::Stats p;
  *p.mutable_sample_time() = TimeUtil::NanosecondsToTimestamp(s.time_ns);
  v1::DaemonStats* d = p.mutable_daemon();
  d->set_version(s.daemon.version);
  CountsToMap<Transport>(s.daemon.server.connections, kNumTransports,
                         d->mutable_connections());
  CountsToMap<Transport>(s.daemon.server.connections_total, kNumTransports,
                         d->mutable_connections_total());
  CountsToMap<HandshakeFailure>(s.daemon.server.handshake_failures,
                                kNumHandshakeFailures,
                                d->mutable_handshake_failures());
  CountsToMap<Refusal>(s.daemon.server.refusals, kNumRefusals,
                       d->mutable_limit_refusals());
  *d->mutable_buffers() = BuffersToProto(s.daemon.buffers);
  d->set_resident_memory_bytes(s.daemon.resident_memory_bytes);
  d->set_open_fds(s.daemon.open_fds);
  *d->mutable_start_time() = TimeUtil::NanosecondsToTimestamp(
      static_cast<int64_t>(s.daemon.start_time_seconds * 1e9));
  for (const ExportStats& e : s.exports) {
    v1::ExportStats* pe = p.add_exports();
    pe->set_name(ExportResourceName(e.name));
    pe->set_backend(e.backend);
    pe->set_draining(e.draining);
    pe->set_failed(e.failed);
    pe->set_failure(e.failure);
    pe->set_size_bytes(e.size_bytes);
    pe->set_clients(e.clients);
    pe->set_bytes_read(e.io.bytes_read);
    pe->set_bytes_written(e.io.bytes_written);
    pe->set_requests_in_flight(e.io.in_flight);
    *pe->mutable_buffers() = BuffersToProto(e.buffers);
    QosToProto(e.qos, pe->mutable_qos());
    for (size_t op = 0; op < kNumIoOps; ++op) {
      v1::OperationStats* o = pe->add_operations();
      o->set_op(std::string(NameOf(static_cast<IoOp>(op))));
      CountsToMap<IoResult>(e.io.requests[op], kNumIoResults,
                            o->mutable_results());
      NonzeroCountsToMap<IoResult>(e.io.backend_errors[op], kNumIoResults,
                                   o->mutable_backend_errors());
      uint64_t cumulative = 0;
      for (size_t b = 0; b < kNumLatencyBuckets; ++b) {
        cumulative += e.io.latency[op][b];
        v1::LatencyBucket* lb = o->add_latency();
        lb->set_upper_bound_seconds(LatencyBucketBound(b));
        lb->set_cumulative_count(cumulative);
      }
      o->set_latency_sum_seconds(static_cast<double>(e.io.latency_sum_ns[op]) /
                                 1e9);
    }
  }
  for (const QosGroupStats& g : s.qos_groups) {
    v1::QosGroupStats* pg = p.add_qos_groups();
    pg->set_name(QosGroupResourceName(g.name));
    pg->set_members(g.members);
    pg->set_throttled_requests(g.qos.throttled_requests);
    pg->set_throttled_seconds(static_cast<double>(g.qos.throttled_ns) / 1e9);
    pg->set_waiting_requests(g.qos.waiting);
  }
  return p;
}

StatsSnapshot StatsFromProto(const v1::Stats& p) {
  StatsSnapshot s;
  s.time_ns = TimeUtil::TimestampToNanoseconds(p.sample_time());
  const v1::DaemonStats& d = p.daemon();
  s.daemon.version = d.version();
  CountsFromMap<Transport>(d.connections(), kNumTransports,
                           s.daemon.server.connections);
  CountsFromMap<Transport>(d.connections_total(), kNumTransports,
                           s.daemon.server.connections_total);
  CountsFromMap<HandshakeFailure>(d.handshake_failures(), kNumHandshakeFailures,
                                  s.daemon.server.handshake_failures);
  CountsFromMap<Refusal>(d.limit_refusals(), kNumRefusals,
                         s.daemon.server.refusals);
  s.daemon.buffers = BuffersFromProto(d.buffers());
  s.daemon.resident_memory_bytes = d.resident_memory_bytes();
  s.daemon.open_fds = d.open_fds();
  s.daemon.start_time_seconds =
      static_cast<double>(TimeUtil::TimestampToNanoseconds(d.start_time())) /
      1e9;
  for (const v1::ExportStats& pe : p.exports()) {
    ExportStats e;
    absl::StatusOr<std::string> id = ExportIdFromName(pe.name());
    e.name = id.ok() ? *id : pe.name();
    e.backend = pe.backend();
    e.draining = pe.draining();
    e.failed = pe.failed();
    e.failure = pe.failure();
    e.size_bytes = pe.size_bytes();
    e.clients = pe.clients();
    e.io.bytes_read = pe.bytes_read();
    e.io.bytes_written = pe.bytes_written();
    e.io.in_flight = pe.requests_in_flight();
    e.buffers = BuffersFromProto(pe.buffers());
    const v1::QosStats& q = pe.qos();
    e.qos = QosFromProto(q.limited(), q.group(), q.throttled_requests(),
                         q.throttled_seconds(), q.waiting_requests());
    for (const v1::OperationStats& o : pe.operations()) {
      size_t op = IndexOf<IoOp>(o.op(), kNumIoOps);
      if (op == kNumIoOps) continue;
      CountsFromMap<IoResult>(o.results(), kNumIoResults, e.io.requests[op]);
      CountsFromMap<IoResult>(o.backend_errors(), kNumIoResults,
                              e.io.backend_errors[op]);
      e.io.latency_sum_ns[op] =
          static_cast<uint64_t>(std::llround(o.latency_sum_seconds() * 1e9));
      if (static_cast<size_t>(o.latency_size()) != kNumLatencyBuckets) continue;
      uint64_t prev = 0;
      for (size_t b = 0; b < kNumLatencyBuckets; ++b) {
        uint64_t c = o.latency(static_cast<int>(b)).cumulative_count();
        e.io.latency[op][b] = c >= prev ? c - prev : 0;
        prev = c;
      }
    }
    s.exports.push_back(std::move(e));
  }
  for (const v1::QosGroupStats& pg : p.qos_groups()) {
    QosGroupStats g;
    g.name = GroupIdOf(pg.name());
    g.members = pg.members();
    // A group is always limited (QosCounts' rule), named by `name`.
    g.qos = QosFromProto(true, "", pg.throttled_requests(),
                         pg.throttled_seconds(), pg.waiting_requests());
    s.qos_groups.push_back(std::move(g));
  }
  return s;
}

}  // namespace nbdmgr
