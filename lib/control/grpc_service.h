#ifndef NBDMGR_LIB_CONTROL_GRPC_SERVICE_H_
#define NBDMGR_LIB_CONTROL_GRPC_SERVICE_H_

// Thin gRPC adapters: each RPC converts the request, calls the domain API,
// and converts the result or maps the absl::Status to a grpc::Status.

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "lib/control/export_manager.h"
#include "lib/metrics/stats_snapshot.h"
#include "nbdmgr/v1/bitmap.grpc.pb.h"
#include "nbdmgr/v1/daemon.grpc.pb.h"
#include "nbdmgr/v1/export.grpc.pb.h"
#include "nbdmgr/v1/overlay.grpc.pb.h"
#include "nbdmgr/v1/qos.grpc.pb.h"
#include "nbdmgr/v1/stats.grpc.pb.h"

namespace nbdmgr {

// absl and gRPC share the canonical code numbering.
grpc::Status ToGrpcStatus(const absl::Status& s);

class ExportServiceImpl final : public v1::ExportService::Service {
 public:
  explicit ExportServiceImpl(ExportManager& manager) : manager_(manager) {}

  grpc::Status CreateExport(grpc::ServerContext*,
                            const v1::CreateExportRequest* req,
                            v1::Export* out) override;
  grpc::Status GetExport(grpc::ServerContext*, const v1::GetExportRequest* req,
                         v1::Export* out) override;
  grpc::Status ListExports(grpc::ServerContext*,
                           const v1::ListExportsRequest* req,
                           v1::ListExportsResponse* out) override;
  grpc::Status UpdateExport(grpc::ServerContext*,
                            const v1::UpdateExportRequest* req,
                            v1::Export* out) override;
  grpc::Status DeleteExport(grpc::ServerContext*,
                            const v1::DeleteExportRequest* req,
                            v1::DeleteExportResponse* out) override;

 private:
  ExportManager& manager_;
};

// BitmapService over the manager's bitmap calls.
class BitmapServiceImpl final : public v1::BitmapService::Service {
 public:
  explicit BitmapServiceImpl(ExportManager& manager) : manager_(manager) {}

  grpc::Status CreateBitmap(grpc::ServerContext*,
                            const v1::CreateBitmapRequest* req,
                            v1::Bitmap* out) override;
  grpc::Status ListBitmaps(grpc::ServerContext*,
                           const v1::ListBitmapsRequest* req,
                           v1::ListBitmapsResponse* out) override;
  grpc::Status ClearBitmap(grpc::ServerContext*,
                           const v1::ClearBitmapRequest* req,
                           v1::Bitmap* out) override;
  grpc::Status DeleteBitmap(grpc::ServerContext*,
                            const v1::DeleteBitmapRequest* req,
                            v1::DeleteBitmapResponse* out) override;
  grpc::Status CheckpointBitmap(grpc::ServerContext*,
                                const v1::CheckpointBitmapRequest* req,
                                v1::CheckpointBitmapResponse* out) override;

 private:
  ExportManager& manager_;
};

// OverlayService over the manager's overlay calls.
class OverlayServiceImpl final : public v1::OverlayService::Service {
 public:
  explicit OverlayServiceImpl(ExportManager& manager) : manager_(manager) {}

  grpc::Status ResetOverlay(grpc::ServerContext*,
                            const v1::ResetOverlayRequest* req,
                            v1::Export* out) override;
  grpc::Status CommitOverlay(grpc::ServerContext*,
                             const v1::CommitOverlayRequest* req,
                             v1::Export* out) override;
  grpc::Status ListOverlays(grpc::ServerContext*,
                            const v1::ListOverlaysRequest* req,
                            v1::ListOverlaysResponse* out) override;

 private:
  ExportManager& manager_;
};

// QosService over the manager's QoS group calls.
class QosServiceImpl final : public v1::QosService::Service {
 public:
  explicit QosServiceImpl(ExportManager& manager) : manager_(manager) {}

  grpc::Status CreateQosGroup(grpc::ServerContext*,
                              const v1::CreateQosGroupRequest* req,
                              v1::QosGroup* out) override;
  grpc::Status GetQosGroup(grpc::ServerContext*,
                           const v1::GetQosGroupRequest* req,
                           v1::QosGroup* out) override;
  grpc::Status ListQosGroups(grpc::ServerContext*,
                             const v1::ListQosGroupsRequest* req,
                             v1::ListQosGroupsResponse* out) override;
  grpc::Status UpdateQosGroup(grpc::ServerContext*,
                              const v1::UpdateQosGroupRequest* req,
                              v1::QosGroup* out) override;
  grpc::Status DeleteQosGroup(grpc::ServerContext*,
                              const v1::DeleteQosGroupRequest* req,
                              v1::DeleteQosGroupResponse* out) override;

 private:
  ExportManager& manager_;
};

// What DaemonService reports, gathered by the daemon.
struct DaemonSnapshot {
  std::vector<std::string> nbd_listen;
  std::string control_listen;
  uint64_t memory_cap_bytes = 0;
  std::chrono::milliseconds uptime{0};
  uint32_t exports = 0;
  uint32_t clients = 0;
  uint64_t buffer_bytes_in_use = 0;
  uint64_t buffer_bytes_cached = 0;
};

class DaemonServiceImpl final : public v1::DaemonService::Service {
 public:
  DaemonServiceImpl(std::function<DaemonSnapshot()> snapshot,
                    std::function<void(uint64_t)> set_memory_cap)
      : snapshot_(std::move(snapshot)),
        set_memory_cap_(std::move(set_memory_cap)) {}

  grpc::Status GetDaemon(grpc::ServerContext*, const v1::GetDaemonRequest*,
                         v1::Daemon* out) override;
  grpc::Status UpdateDaemon(grpc::ServerContext*,
                            const v1::UpdateDaemonRequest* req,
                            v1::Daemon* out) override;

 private:
  std::function<DaemonSnapshot()> snapshot_;
  std::function<void(uint64_t)> set_memory_cap_;
};

// StatsService over a sampling function (thread-safe, called per request).
class StatsServiceImpl final : public v1::StatsService::Service {
 public:
  explicit StatsServiceImpl(std::function<StatsSnapshot()> collect)
      : collect_(std::move(collect)) {}

  grpc::Status GetStats(grpc::ServerContext*, const v1::GetStatsRequest* req,
                        v1::Stats* out) override;

 private:
  std::function<StatsSnapshot()> collect_;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_CONTROL_GRPC_SERVICE_H_
