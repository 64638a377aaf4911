#include "lib/control/grpc_service.h"

#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "lib/convert/bitmap_convert.h"
#include "lib/convert/proto_convert.h"
#include "lib/convert/stats_convert.h"
#include "lib/util/strings.h"

namespace nbdmgr {

grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()),
                      std::string(s.message()));
}

namespace {

// A call on the export named `name` ("exports/{export}") that answers it:
// parses the name, runs `call` on the id, converts what it returns.
grpc::Status OnExport(
    const std::string& name,
    absl::FunctionRef<absl::StatusOr<ExportInfo>(const std::string& id)> call,
    v1::Export* out) {
  absl::StatusOr<std::string> id = ExportIdFromName(name);
  if (!id.ok()) return ToGrpcStatus(id.status());
  absl::StatusOr<ExportInfo> info = call(*id);
  if (!info.ok()) return ToGrpcStatus(info.status());
  *out = ExportInfoToProto(*info);
  return grpc::Status::OK;
}

// The QoS paths an update_mask takes below a QosLimits field `f`, for
// messages.
std::string QosPathsText(std::string_view f) {
  return absl::StrCat(ToAbsl(f), ", ", ToAbsl(f), ".LIMIT, ", ToAbsl(f),
                      ".LIMIT.rate, ", ToAbsl(f),
                      ".LIMIT.burst; LIMIT: iops_total, iops_read, iops_write, "
                      "bps_total, bps_read, bps_write");
}

// Adds to `update` the change the update_mask path `path` asks of the
// QosLimits field `field` ("qos", "limits") of a message, whose value is
// `p`: `field` (every limit), `field`.LIMIT (its rate and burst) or
// `field`.LIMIT.rate|burst (that one number). Returns false if `path` is
// not `field` or below it; InvalidArgument for an unknown limit or part
// (`valid` lists the message's other paths for the message).
absl::StatusOr<bool> AddQosPath(std::string_view path, std::string_view field,
                                std::string_view valid, const v1::QosLimits& p,
                                QosLimitsUpdate& update) {
  if (!path.starts_with(field)) return false;
  std::string_view rest = path.substr(field.size());
  if (rest.empty()) {
    for (QosLimitKind k : kAllQosLimitKinds) {
      const v1::RateLimit& r = RateLimitOf(p, k);
      update.set(k, RateLimit{r.rate(), r.burst()});
    }
    return true;
  }
  if (!rest.starts_with('.')) return false;
  rest.remove_prefix(1);
  const size_t dot = rest.find('.');
  const std::string_view limit = rest.substr(0, dot);
  const std::string_view part =
      dot == std::string_view::npos ? "" : rest.substr(dot + 1);
  for (QosLimitKind k : kAllQosLimitKinds) {
    if (FieldNameOf(k) != limit) continue;
    const v1::RateLimit& r = RateLimitOf(p, k);
    if (dot == std::string_view::npos) {
      update.set(k, RateLimit{r.rate(), r.burst()});
      return true;
    }
    if (part == "rate") {
      update.set_rate(k, r.rate());
      return true;
    }
    if (part == "burst") {
      update.set_burst(k, r.burst());
      return true;
    }
    break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("field \"", ToAbsl(path), "\" cannot be updated (",
                   ToAbsl(valid), QosPathsText(field), ")"));
}

constexpr char kUpdatableExportFields[] =
    "description, buffer_strategy, memory_cap_bytes, pool_idle_release, tls, "
    "max_clients, stall_timeout, qos_group, ";

}  // namespace

grpc::Status ExportServiceImpl::CreateExport(grpc::ServerContext*,
                                             const v1::CreateExportRequest* req,
                                             v1::Export* out) {
  absl::StatusOr<ExportConfig> config =
      ExportConfigFromProto(req->export_(), req->export_id());
  if (!config.ok()) return ToGrpcStatus(config.status());
  absl::StatusOr<ExportInfo> info =
      manager_.CreateExport(*config, req->take_over());
  if (!info.ok()) return ToGrpcStatus(info.status());
  *out = ExportInfoToProto(*info);
  return grpc::Status::OK;
}

grpc::Status ExportServiceImpl::GetExport(grpc::ServerContext*,
                                          const v1::GetExportRequest* req,
                                          v1::Export* out) {
  return OnExport(
      req->name(),
      [this](const std::string& id) { return manager_.GetExport(id); }, out);
}

grpc::Status ExportServiceImpl::ListExports(grpc::ServerContext*,
                                            const v1::ListExportsRequest* req,
                                            v1::ListExportsResponse* out) {
  absl::StatusOr<ExportManager::Page> page =
      manager_.ListExports(req->page_size(), req->page_token());
  if (!page.ok()) return ToGrpcStatus(page.status());
  for (const ExportInfo& info : page->exports) {
    *out->add_exports() = ExportInfoToProto(info);
  }
  out->set_next_page_token(page->next_page_token);
  return grpc::Status::OK;
}

grpc::Status ExportServiceImpl::UpdateExport(grpc::ServerContext*,
                                             const v1::UpdateExportRequest* req,
                                             v1::Export* out) {
  absl::StatusOr<std::string> id = ExportIdFromName(req->export_().name());
  if (!id.ok()) return ToGrpcStatus(id.status());
  if (req->update_mask().paths().empty() && !req->retry()) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("update_mask is required (", kUpdatableExportFields,
                     QosPathsText("qos"), ") unless retry is set")));
  }
  ExportUpdate update;
  update.retry = req->retry();
  const v1::Export& e = req->export_();
  for (const std::string& path : req->update_mask().paths()) {
    absl::StatusOr<bool> qos =
        AddQosPath(path, "qos", kUpdatableExportFields, e.qos(), update.qos);
    if (!qos.ok()) return ToGrpcStatus(qos.status());
    if (*qos) continue;
    if (path == "qos_group") {
      // "" leaves the group; otherwise "qosGroups/{group}" or "{group}".
      if (e.qos_group().empty()) {
        update.qos_group = "";
      } else {
        absl::StatusOr<std::string> g = QosGroupIdFromName(e.qos_group());
        if (!g.ok()) return ToGrpcStatus(g.status());
        update.qos_group = *g;
      }
    } else if (path == "description") {
      update.description = e.description();
    } else if (path == "buffer_strategy") {
      absl::StatusOr<BufferStrategy> s = StrategyFromProto(e.buffer_strategy());
      if (!s.ok()) return ToGrpcStatus(s.status());
      update.buffer_strategy = *s;
    } else if (path == "memory_cap_bytes") {
      update.memory_cap_bytes = e.memory_cap_bytes();
    } else if (path == "pool_idle_release") {
      absl::StatusOr<std::chrono::milliseconds> d =
          DurationFromProto(e.pool_idle_release(), "pool_idle_release");
      if (!d.ok()) return ToGrpcStatus(d.status());
      update.pool_idle_release = *d;
    } else if (path == "tls") {
      absl::StatusOr<TlsMode> m = TlsModeFromProto(e.tls());
      if (!m.ok()) return ToGrpcStatus(m.status());
      update.tls = *m;
    } else if (path == "max_clients") {
      update.max_clients = e.max_clients();
    } else if (path == "stall_timeout") {
      if (!e.has_stall_timeout()) {
        update.stall_timeout.emplace(std::nullopt);  // the daemon's default
      } else {
        absl::StatusOr<std::chrono::milliseconds> d =
            DurationFromProto(e.stall_timeout(), "stall_timeout");
        if (!d.ok()) return ToGrpcStatus(d.status());
        update.stall_timeout.emplace(*d);
      }
    } else {
      return ToGrpcStatus(absl::InvalidArgumentError(
          absl::StrCat("field \"", path, "\" cannot be updated (",
                       kUpdatableExportFields, QosPathsText("qos"), ")")));
    }
  }
  absl::StatusOr<ExportInfo> info = manager_.UpdateExport(*id, update);
  if (!info.ok()) return ToGrpcStatus(info.status());
  *out = ExportInfoToProto(*info);
  return grpc::Status::OK;
}

grpc::Status ExportServiceImpl::DeleteExport(grpc::ServerContext*,
                                             const v1::DeleteExportRequest* req,
                                             v1::DeleteExportResponse* out) {
  absl::StatusOr<std::string> id = ExportIdFromName(req->name());
  if (!id.ok()) return ToGrpcStatus(id.status());
  DeleteMode mode = DeleteMode::kSafe;
  switch (req->mode()) {
    case v1::DELETE_MODE_UNSPECIFIED:
    case v1::DELETE_MODE_SAFE:
      mode = DeleteMode::kSafe;
      break;
    case v1::DELETE_MODE_DRAIN:
      mode = DeleteMode::kDrain;
      break;
    case v1::DELETE_MODE_HARD:
      mode = DeleteMode::kHard;
      break;
    default:
      return ToGrpcStatus(absl::InvalidArgumentError("mode: unknown value"));
  }
  std::chrono::milliseconds timeout(30000);
  if (req->has_timeout()) {
    absl::StatusOr<std::chrono::milliseconds> d =
        DurationFromProto(req->timeout(), "timeout");
    if (!d.ok()) return ToGrpcStatus(d.status());
    if (*d > std::chrono::hours(1)) {
      return ToGrpcStatus(
          absl::InvalidArgumentError("timeout must be between 0 and 1h"));
    }
    timeout = *d;
  }
  absl::StatusOr<int> closed = manager_.DeleteExport(*id, mode, timeout);
  if (!closed.ok()) return ToGrpcStatus(closed.status());
  out->set_closed_clients(static_cast<uint32_t>(*closed));
  return grpc::Status::OK;
}

grpc::Status BitmapServiceImpl::CreateBitmap(grpc::ServerContext*,
                                             const v1::CreateBitmapRequest* req,
                                             v1::Bitmap* out) {
  absl::StatusOr<std::string> id = ExportIdFromName(req->export_());
  if (!id.ok()) return ToGrpcStatus(id.status());
  absl::StatusOr<BitmapInfo> info = manager_.AddBitmap(
      *id, req->bitmap_id(), req->bitmap().granularity_bytes());
  if (!info.ok()) return ToGrpcStatus(info.status());
  *out = BitmapInfoToProto(*id, *info);
  return grpc::Status::OK;
}

grpc::Status BitmapServiceImpl::ListBitmaps(grpc::ServerContext*,
                                            const v1::ListBitmapsRequest* req,
                                            v1::ListBitmapsResponse* out) {
  absl::StatusOr<std::string> id = ExportIdFromName(req->export_());
  if (!id.ok()) return ToGrpcStatus(id.status());
  absl::StatusOr<std::vector<BitmapInfo>> infos = manager_.ListBitmaps(*id);
  if (!infos.ok()) return ToGrpcStatus(infos.status());
  for (const BitmapInfo& info : *infos) {
    *out->add_bitmaps() = BitmapInfoToProto(*id, info);
  }
  return grpc::Status::OK;
}

grpc::Status BitmapServiceImpl::ClearBitmap(grpc::ServerContext*,
                                            const v1::ClearBitmapRequest* req,
                                            v1::Bitmap* out) {
  absl::StatusOr<BitmapRef> ref = BitmapRefFromName(req->name());
  if (!ref.ok()) return ToGrpcStatus(ref.status());
  absl::StatusOr<BitmapInfo> info =
      manager_.ClearBitmap(ref->export_id, ref->bitmap);
  if (!info.ok()) return ToGrpcStatus(info.status());
  *out = BitmapInfoToProto(ref->export_id, *info);
  return grpc::Status::OK;
}

grpc::Status BitmapServiceImpl::DeleteBitmap(grpc::ServerContext*,
                                             const v1::DeleteBitmapRequest* req,
                                             v1::DeleteBitmapResponse*) {
  absl::StatusOr<BitmapRef> ref = BitmapRefFromName(req->name());
  if (!ref.ok()) return ToGrpcStatus(ref.status());
  return ToGrpcStatus(manager_.RemoveBitmap(ref->export_id, ref->bitmap));
}

grpc::Status BitmapServiceImpl::CheckpointBitmap(
    grpc::ServerContext*, const v1::CheckpointBitmapRequest* req,
    v1::CheckpointBitmapResponse* out) {
  absl::StatusOr<std::string> id = ExportIdFromName(req->export_());
  if (!id.ok()) return ToGrpcStatus(id.status());
  absl::StatusOr<std::pair<BitmapInfo, BitmapInfo>> infos =
      manager_.CheckpointBitmap(*id, req->frozen(), req->started(),
                                req->granularity_bytes());
  if (!infos.ok()) return ToGrpcStatus(infos.status());
  *out->mutable_frozen() = BitmapInfoToProto(*id, infos->first);
  *out->mutable_started() = BitmapInfoToProto(*id, infos->second);
  return grpc::Status::OK;
}

grpc::Status OverlayServiceImpl::ResetOverlay(
    grpc::ServerContext*, const v1::ResetOverlayRequest* req, v1::Export* out) {
  return OnExport(
      req->name(),
      [this](const std::string& id) { return manager_.ResetOverlay(id); }, out);
}

grpc::Status OverlayServiceImpl::CommitOverlay(
    grpc::ServerContext*, const v1::CommitOverlayRequest* req,
    v1::Export* out) {
  return OnExport(
      req->name(),
      [this](const std::string& id) { return manager_.CommitOverlay(id); },
      out);
}

grpc::Status OverlayServiceImpl::ListOverlays(
    grpc::ServerContext*, const v1::ListOverlaysRequest* req,
    v1::ListOverlaysResponse* out) {
  absl::StatusOr<std::string> id = ExportIdFromName(req->base());
  if (!id.ok()) return ToGrpcStatus(id.status());
  absl::StatusOr<std::vector<ExportInfo>> infos = manager_.ListOverlays(*id);
  if (!infos.ok()) return ToGrpcStatus(infos.status());
  for (const ExportInfo& info : *infos) {
    *out->add_overlays() = ExportInfoToProto(info);
  }
  return grpc::Status::OK;
}

namespace {

// "qosGroups/{group}" -> group. InvalidArgument for anything else.
absl::StatusOr<std::string> QosGroupIdOf(const std::string& name) {
  if (!name.starts_with("qosGroups/")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "QoS group name \"", name, "\" must be \"qosGroups/{group}\""));
  }
  return QosGroupIdFromName(name);
}

}  // namespace

grpc::Status QosServiceImpl::CreateQosGroup(
    grpc::ServerContext*, const v1::CreateQosGroupRequest* req,
    v1::QosGroup* out) {
  absl::StatusOr<QosGroupConfig> config =
      QosGroupConfigFromProto(req->qos_group(), req->qos_group_id());
  if (!config.ok()) return ToGrpcStatus(config.status());
  absl::StatusOr<QosGroupInfo> info = manager_.CreateQosGroup(*config);
  if (!info.ok()) return ToGrpcStatus(info.status());
  *out = QosGroupInfoToProto(*info);
  return grpc::Status::OK;
}

grpc::Status QosServiceImpl::GetQosGroup(grpc::ServerContext*,
                                         const v1::GetQosGroupRequest* req,
                                         v1::QosGroup* out) {
  absl::StatusOr<std::string> id = QosGroupIdOf(req->name());
  if (!id.ok()) return ToGrpcStatus(id.status());
  absl::StatusOr<QosGroupInfo> info = manager_.GetQosGroup(*id);
  if (!info.ok()) return ToGrpcStatus(info.status());
  *out = QosGroupInfoToProto(*info);
  return grpc::Status::OK;
}

grpc::Status QosServiceImpl::ListQosGroups(grpc::ServerContext*,
                                           const v1::ListQosGroupsRequest*,
                                           v1::ListQosGroupsResponse* out) {
  for (const QosGroupInfo& info : manager_.ListQosGroups()) {
    *out->add_qos_groups() = QosGroupInfoToProto(info);
  }
  return grpc::Status::OK;
}

grpc::Status QosServiceImpl::UpdateQosGroup(
    grpc::ServerContext*, const v1::UpdateQosGroupRequest* req,
    v1::QosGroup* out) {
  absl::StatusOr<std::string> id = QosGroupIdOf(req->qos_group().name());
  if (!id.ok()) return ToGrpcStatus(id.status());
  if (req->update_mask().paths().empty()) {
    return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
        "update_mask is required (", QosPathsText("limits"), ")")));
  }
  QosLimitsUpdate update;
  for (const std::string& path : req->update_mask().paths()) {
    absl::StatusOr<bool> qos =
        AddQosPath(path, "limits", "", req->qos_group().limits(), update);
    if (!qos.ok()) return ToGrpcStatus(qos.status());
    if (!*qos) {
      return ToGrpcStatus(absl::InvalidArgumentError(
          absl::StrCat("field \"", path, "\" cannot be updated (",
                       QosPathsText("limits"), ")")));
    }
  }
  absl::StatusOr<QosGroupInfo> info = manager_.UpdateQosGroup(*id, update);
  if (!info.ok()) return ToGrpcStatus(info.status());
  *out = QosGroupInfoToProto(*info);
  return grpc::Status::OK;
}

grpc::Status QosServiceImpl::DeleteQosGroup(
    grpc::ServerContext*, const v1::DeleteQosGroupRequest* req,
    v1::DeleteQosGroupResponse*) {
  absl::StatusOr<std::string> id = QosGroupIdOf(req->name());
  if (!id.ok()) return ToGrpcStatus(id.status());
  return ToGrpcStatus(manager_.DeleteQosGroup(*id));
}

namespace {

void FillDaemon(const DaemonSnapshot& s, v1::Daemon* out) {
  out->set_version(NBDMGR_VERSION);
  for (const auto& a : s.nbd_listen) out->add_nbd_listen(a);
  out->set_control_listen(s.control_listen);
  out->set_memory_cap_bytes(s.memory_cap_bytes);
  *out->mutable_uptime() = DurationToProto(s.uptime);
  out->set_exports(s.exports);
  out->set_connected_clients(s.clients);
  out->set_buffer_bytes_in_use(s.buffer_bytes_in_use);
  out->set_buffer_bytes_cached(s.buffer_bytes_cached);
}

}  // namespace

grpc::Status DaemonServiceImpl::GetDaemon(grpc::ServerContext*,
                                          const v1::GetDaemonRequest*,
                                          v1::Daemon* out) {
  FillDaemon(snapshot_(), out);
  return grpc::Status::OK;
}

grpc::Status DaemonServiceImpl::UpdateDaemon(grpc::ServerContext*,
                                             const v1::UpdateDaemonRequest* req,
                                             v1::Daemon* out) {
  if (req->update_mask().paths().empty()) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        "update_mask is required (memory_cap_bytes)"));
  }
  for (const std::string& path : req->update_mask().paths()) {
    if (path != "memory_cap_bytes") {
      return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
          "field \"", path, "\" cannot be updated (memory_cap_bytes)")));
    }
  }
  set_memory_cap_(req->daemon().memory_cap_bytes());
  FillDaemon(snapshot_(), out);
  return grpc::Status::OK;
}

grpc::Status StatsServiceImpl::GetStats(grpc::ServerContext*,
                                        const v1::GetStatsRequest* req,
                                        v1::Stats* out) {
  std::string id;
  if (!req->name().empty()) {
    absl::StatusOr<std::string> parsed = ExportIdFromName(req->name());
    if (!parsed.ok()) return ToGrpcStatus(parsed.status());
    id = *parsed;
  }
  StatsSnapshot s = collect_();
  if (!id.empty()) {
    std::erase_if(s.exports,
                  [&](const ExportStats& e) { return e.name != id; });
    if (s.exports.empty()) {
      return ToGrpcStatus(
          absl::NotFoundError(absl::StrCat("export \"", id, "\" not found")));
    }
  }
  *out = StatsToProto(s);
  return grpc::Status::OK;
}

}  // namespace nbdmgr
