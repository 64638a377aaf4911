#ifndef NBDMGR_LIB_EXPORT_EXPORT_INFO_H_
#define NBDMGR_LIB_EXPORT_EXPORT_INFO_H_

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "lib/backend/overlay_backend.h"
#include "lib/export/export.h"
#include "lib/export/export_config.h"

namespace nbdmgr {

// Where an export is in its life.
enum class ExportState {
  kActive,    // served
  kDraining,  // being deleted: new clients refused, connected ones finish
  kFailed,    // not served: its backend could not be opened (see failure)
};

// An export as the control plane reports it.
struct ExportInfo {
  ExportConfig config;  // with live changes (Export::current_config())
  uint64_t size = 0;
  BlockSizes block_sizes;
  bool multi_conn = false;
  // How READ, WRITE and FLUSH run: "io_uring", "threads" (a file export's
  // engine), "librbd" (rbd) or "inline" (memory, null); empty while not
  // served.
  std::string io;
  // rbd: the client holding the image's exclusive lock ("" if none).
  std::string lock_owner;
  int clients = 0;
  std::chrono::system_clock::time_point created;
  ExportState state = ExportState::kActive;
  std::string failure;      // kFailed: why
  bool persistent = false;  // created over the API
  // Overlays: set for an overlay (what it holds of its own).
  std::optional<OverlayStats> overlay;
  int overlays = 0;  // exports using this one as their base
};

// A QoS group as the control plane reports it.
struct QosGroupInfo {
  std::string name;
  QosLimits limits;
  // Exports that name the group (served or FAILED), sorted.
  std::vector<std::string> exports;
  int served_members = 0;   // of them, served now
  bool persistent = false;  // created over the API (survives restarts)
  ThrottleStats stats;      // waits at the group's limits
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_EXPORT_EXPORT_INFO_H_
