#include "lib/convert/proto_convert.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "lib/export/export_info.h"
#include "lib/util/duration.h"
#include "lib/util/strings.h"

namespace nbdmgr {

absl::StatusOr<std::string> ExportIdFromName(const std::string& name) {
  constexpr std::string_view kPrefix = "exports/";
  if (!name.starts_with(kPrefix)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "resource name \"", name, "\" must look like exports/{export}"));
  }
  std::string id = name.substr(kPrefix.size());
  if (absl::Status st = ValidateExportName(id); !st.ok()) return st;
  return id;
}

std::string ExportResourceName(const std::string& id) {
  return absl::StrCat("exports/", id);
}

google::protobuf::Duration DurationToProto(std::chrono::milliseconds d) {
  google::protobuf::Duration p;
  p.set_seconds(d.count() / 1000);
  p.set_nanos(static_cast<int32_t>(d.count() % 1000) * 1000000);
  return p;
}

absl::StatusOr<std::chrono::milliseconds> DurationFromProto(
    const google::protobuf::Duration& d, std::string_view field) {
  // The same bound as every flag (kMaxDuration), checked before the
  // multiplication could overflow.
  if (d.seconds() < 0 || d.nanos() < 0 || d.nanos() > 999999999 ||
      d.seconds() > kMaxDuration.count() / 1000) {
    return absl::InvalidArgumentError(absl::StrCat(
        ToAbsl(field), ": duration ", d.seconds(), "s ", d.nanos(),
        "ns is out of range (0 to 100 years, nanos 0 to 999999999)"));
  }
  return std::chrono::milliseconds(d.seconds() * 1000 + d.nanos() / 1000000);
}

absl::StatusOr<BufferStrategy> StrategyFromProto(v1::BufferStrategy s) {
  switch (s) {
    case v1::BUFFER_STRATEGY_UNSPECIFIED:
    case v1::BUFFER_STRATEGY_POOL:
      return BufferStrategy::kPool;
    case v1::BUFFER_STRATEGY_FIXED:
      return BufferStrategy::kFixed;
    case v1::BUFFER_STRATEGY_GROW:
      return BufferStrategy::kGrow;
    case v1::BUFFER_STRATEGY_EXACT:
      return BufferStrategy::kExact;
    case v1::BUFFER_STRATEGY_STREAM:
      return BufferStrategy::kStream;
    default:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("buffer_strategy: unknown value ", static_cast<int>(s)));
}

absl::StatusOr<TlsMode> TlsModeFromProto(v1::TlsMode m) {
  switch (m) {
    case v1::TLS_MODE_UNSPECIFIED:
    case v1::TLS_MODE_OFF:
      return TlsMode::kOff;
    case v1::TLS_MODE_OPTIONAL:
      return TlsMode::kOptional;
    case v1::TLS_MODE_REQUIRE:
      return TlsMode::kRequire;
    default:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("tls: unknown value ", static_cast<int>(m)));
}

v1::TlsMode TlsModeToProto(TlsMode m) {
  switch (m) {
    case TlsMode::kOff:
      return v1::TLS_MODE_OFF;
    case TlsMode::kOptional:
      return v1::TLS_MODE_OPTIONAL;
    case TlsMode::kRequire:
      return v1::TLS_MODE_REQUIRE;
  }
  return v1::TLS_MODE_OFF;
}

v1::BufferStrategy StrategyToProto(BufferStrategy s) {
  switch (s) {
    case BufferStrategy::kFixed:
      return v1::BUFFER_STRATEGY_FIXED;
    case BufferStrategy::kGrow:
      return v1::BUFFER_STRATEGY_GROW;
    case BufferStrategy::kExact:
      return v1::BUFFER_STRATEGY_EXACT;
    case BufferStrategy::kPool:
      return v1::BUFFER_STRATEGY_POOL;
    case BufferStrategy::kStream:
      return v1::BUFFER_STRATEGY_STREAM;
  }
  return v1::BUFFER_STRATEGY_UNSPECIFIED;
}

absl::StatusOr<ExportConfig> ExportConfigFromProto(const v1::Export& p,
                                                   const std::string& id) {
  ExportConfig c;
  c.name = id;
  c.description = p.description();
  c.read_only = p.read_only();
  switch (p.backend_case()) {
    case v1::Export::kMemory:
      c.backend = BackendKind::kMemory;
      c.size = p.memory().size_bytes();
      break;
    case v1::Export::kNull:
      c.backend = BackendKind::kNull;
      c.size = p.null().size_bytes();
      break;
    case v1::Export::kFile:
      c.backend = BackendKind::kFile;
      c.path = p.file().path();
      c.create = p.file().create();
      if (p.file().size_bytes() != 0) c.size = p.file().size_bytes();
      switch (p.file().io()) {
        case v1::FILE_IO_AUTO:
          c.io = FileIo::kAuto;
          break;
        case v1::FILE_IO_IO_URING:
          c.io = FileIo::kIoUring;
          break;
        case v1::FILE_IO_THREADS:
          c.io = FileIo::kThreads;
          break;
        default:
          return absl::InvalidArgumentError(
              absl::StrCat("file.io: unknown value ", p.file().io()));
      }
      c.base = p.file().base();
      if (p.file().cluster_size_bytes() > UINT32_MAX) {
        return absl::InvalidArgumentError(absl::StrCat(
            "file.cluster_size_bytes: ", p.file().cluster_size_bytes(),
            " is not a power of two from 4KiB to 2MiB"));
      }
      c.cluster_size = static_cast<uint32_t>(p.file().cluster_size_bytes());
      // An overlay file takes its base's size.
      if (c.create && !c.size && c.base.empty()) {
        return absl::InvalidArgumentError("file.create needs file.size_bytes");
      }
      break;
    case v1::Export::kRbd:
      c.backend = BackendKind::kRbd;
      c.rbd.pool = p.rbd().pool();
      c.rbd.image = p.rbd().image();
      c.rbd.ns = p.rbd().namespace_();
      c.rbd.snapshot = p.rbd().snapshot();
      c.rbd.ceph_conf = p.rbd().ceph_conf();
      c.rbd.ceph_user = p.rbd().ceph_user();
      if (p.rbd().size_bytes() != 0) c.size = p.rbd().size_bytes();
      // A snapshot cannot be written: its export is read-only.
      if (!c.rbd.snapshot.empty()) c.read_only = true;
      break;
    default:
      return absl::InvalidArgumentError(
          "backend: one of memory, file, null or rbd is required");
  }
  if (p.has_block_sizes()) {
    const auto& b = p.block_sizes();
    if (b.minimum()) c.block_sizes.minimum = b.minimum();
    if (b.preferred()) c.block_sizes.preferred = b.preferred();
    if (b.maximum_payload())
      c.block_sizes.maximum_payload = b.maximum_payload();
  }
  absl::StatusOr<BufferStrategy> strategy =
      StrategyFromProto(p.buffer_strategy());
  if (!strategy.ok()) return strategy.status();
  c.buffers.strategy = *strategy;
  c.buffers.memory_cap_bytes = p.memory_cap_bytes();
  if (p.has_pool_idle_release()) {
    absl::StatusOr<std::chrono::milliseconds> d =
        DurationFromProto(p.pool_idle_release(), "pool_idle_release");
    if (!d.ok()) return d.status();
    c.buffers.pool_idle_release = *d;
  }
  absl::StatusOr<TlsMode> tls = TlsModeFromProto(p.tls());
  if (!tls.ok()) return tls.status();
  c.tls = *tls;
  c.max_clients = p.max_clients();
  if (p.has_stall_timeout()) {
    absl::StatusOr<std::chrono::milliseconds> d =
        DurationFromProto(p.stall_timeout(), "stall_timeout");
    if (!d.ok()) return d.status();
    c.stall_timeout = *d;
  }
  c.qos = QosLimitsFromProto(p.qos());
  if (!p.qos_group().empty()) {
    absl::StatusOr<std::string> g = QosGroupIdFromName(p.qos_group());
    if (!g.ok()) return g.status();
    c.qos_group = *g;
  }
  if (absl::Status st = ValidateExportConfig(c); !st.ok()) return st;
  return c;
}

v1::Export ExportConfigToProto(const ExportConfig& c) {
  v1::Export p;
  p.set_name(ExportResourceName(c.name));
  p.set_description(c.description);
  p.set_read_only(c.read_only);
  switch (c.backend) {
    case BackendKind::kMemory:
      p.mutable_memory()->set_size_bytes(c.size.value_or(0));
      break;
    case BackendKind::kNull:
      p.mutable_null()->set_size_bytes(c.size.value_or(0));
      break;
    case BackendKind::kFile:
      p.mutable_file()->set_path(c.path);
      p.mutable_file()->set_create(c.create);
      p.mutable_file()->set_size_bytes(c.size.value_or(0));
      p.mutable_file()->set_io(c.io == FileIo::kIoUring   ? v1::FILE_IO_IO_URING
                               : c.io == FileIo::kThreads ? v1::FILE_IO_THREADS
                                                          : v1::FILE_IO_AUTO);
      p.mutable_file()->set_base(c.base);
      p.mutable_file()->set_cluster_size_bytes(c.cluster_size);
      break;
    case BackendKind::kRbd: {
      v1::RbdBackend* r = p.mutable_rbd();
      r->set_pool(c.rbd.pool);
      r->set_image(c.rbd.image);
      r->set_namespace_(c.rbd.ns);
      r->set_snapshot(c.rbd.snapshot);
      r->set_ceph_conf(c.rbd.ceph_conf);
      r->set_ceph_user(c.rbd.ceph_user);
      r->set_size_bytes(c.size.value_or(0));
      break;
    }
  }
  p.mutable_block_sizes()->set_minimum(c.block_sizes.minimum);
  p.mutable_block_sizes()->set_preferred(c.block_sizes.preferred);
  p.mutable_block_sizes()->set_maximum_payload(c.block_sizes.maximum_payload);
  p.set_buffer_strategy(StrategyToProto(c.buffers.strategy));
  p.set_memory_cap_bytes(c.buffers.memory_cap_bytes);
  *p.mutable_pool_idle_release() = DurationToProto(c.buffers.pool_idle_release);
  p.set_tls(TlsModeToProto(c.tls));
  p.set_max_clients(c.max_clients);
  if (c.stall_timeout)
    *p.mutable_stall_timeout() = DurationToProto(*c.stall_timeout);
  if (c.qos.any()) *p.mutable_qos() = QosLimitsToProto(c.qos);
  if (!c.qos_group.empty()) p.set_qos_group(QosGroupResourceName(c.qos_group));
  return p;
}

v1::Export ExportInfoToProto(const ExportInfo& info) {
  v1::Export p = ExportConfigToProto(info.config);
  p.set_multi_conn(info.multi_conn);
  p.set_size_bytes(info.size);
  p.set_connected_clients(static_cast<uint32_t>(info.clients));
  auto since_epoch = info.created.time_since_epoch();
  auto secs = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  p.mutable_create_time()->set_seconds(secs.count());
  p.mutable_create_time()->set_nanos(static_cast<int32_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch - secs)
          .count()));
  switch (info.state) {
    case ExportState::kActive:
      p.set_state(v1::Export::STATE_ACTIVE);
      break;
    case ExportState::kDraining:
      p.set_state(v1::Export::STATE_DRAINING);
      break;
    case ExportState::kFailed:
      p.set_state(v1::Export::STATE_FAILED);
      p.set_failure(info.failure);
      break;
  }
  p.set_persistent(info.persistent);
  p.set_io_engine(info.io);
  if (p.has_rbd()) p.mutable_rbd()->set_lock_owner(info.lock_owner);
  if (info.overlay) {
    v1::OverlayStatus* o = p.mutable_overlay();
    o->set_cluster_size_bytes(info.overlay->cluster_size);
    o->set_allocated_bytes(info.overlay->allocated_bytes);
    o->set_zero_bytes(info.overlay->zero_bytes);
    o->set_copy_ups(info.overlay->copy_ups);
  }
  p.set_overlays(static_cast<uint32_t>(info.overlays));
  return p;
}

const v1::RateLimit& RateLimitOf(const v1::QosLimits& p, QosLimitKind kind) {
  switch (kind) {
    case QosLimitKind::kIopsTotal:
      return p.iops_total();
    case QosLimitKind::kIopsRead:
      return p.iops_read();
    case QosLimitKind::kIopsWrite:
      return p.iops_write();
    case QosLimitKind::kBpsTotal:
      return p.bps_total();
    case QosLimitKind::kBpsRead:
      return p.bps_read();
    case QosLimitKind::kBpsWrite:
      return p.bps_write();
  }
  return v1::RateLimit::default_instance();
}

v1::RateLimit* MutableRateLimitOf(v1::QosLimits* p, QosLimitKind kind) {
  switch (kind) {
    case QosLimitKind::kIopsTotal:
      return p->mutable_iops_total();
    case QosLimitKind::kIopsRead:
      return p->mutable_iops_read();
    case QosLimitKind::kIopsWrite:
      return p->mutable_iops_write();
    case QosLimitKind::kBpsTotal:
      return p->mutable_bps_total();
    case QosLimitKind::kBpsRead:
      return p->mutable_bps_read();
    case QosLimitKind::kBpsWrite:
      return p->mutable_bps_write();
  }
  return p->mutable_iops_total();
}

QosLimits QosLimitsFromProto(const v1::QosLimits& p) {
  QosLimits l;
  for (QosLimitKind k : kAllQosLimitKinds) {
    const v1::RateLimit& r = RateLimitOf(p, k);
    l[k] = RateLimit{r.rate(), r.burst()};
  }
  return l;
}

v1::QosLimits QosLimitsToProto(const QosLimits& l) {
  v1::QosLimits p;
  for (QosLimitKind k : kAllQosLimitKinds) {
    if (l[k].rate == 0 && l[k].burst == 0) continue;
    v1::RateLimit* r = MutableRateLimitOf(&p, k);
    r->set_rate(l[k].rate);
    r->set_burst(l[k].burst);
  }
  return p;
}

absl::StatusOr<std::string> QosGroupIdFromName(const std::string& name) {
  constexpr std::string_view kPrefix = "qosGroups/";
  std::string id = name;
  if (name.starts_with(kPrefix)) {
    id = name.substr(kPrefix.size());
  } else if (name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "QoS group name \"", name, "\" must be \"qosGroups/{group}\""));
  }
  if (absl::Status st = ValidateQosGroupName(id); !st.ok()) return st;
  return id;
}

std::string QosGroupResourceName(const std::string& id) {
  return absl::StrCat("qosGroups/", id);
}

absl::StatusOr<QosGroupConfig> QosGroupConfigFromProto(const v1::QosGroup& p,
                                                       const std::string& id) {
  QosGroupConfig g{id, QosLimitsFromProto(p.limits())};
  if (absl::Status st = ValidateQosGroupConfig(g); !st.ok()) return st;
  return g;
}

v1::QosGroup QosGroupConfigToProto(const QosGroupConfig& g) {
  v1::QosGroup p;
  p.set_name(QosGroupResourceName(g.name));
  *p.mutable_limits() = QosLimitsToProto(g.limits);
  return p;
}

v1::QosGroup QosGroupInfoToProto(const QosGroupInfo& info) {
  v1::QosGroup p = QosGroupConfigToProto({info.name, info.limits});
  for (const std::string& e : info.exports) {
    p.add_exports(ExportResourceName(e));
  }
  p.set_persistent(info.persistent);
  p.set_throttled_requests(info.stats.throttled_requests);
  p.set_throttled_seconds(static_cast<double>(info.stats.throttled_ns) / 1e9);
  p.set_waiting_requests(info.stats.waiting);
  return p;
}

}  // namespace nbdmgr
