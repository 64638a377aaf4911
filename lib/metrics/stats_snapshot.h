#ifndef NBDMGR_LIB_METRICS_STATS_SNAPSHOT_H_
#define NBDMGR_LIB_METRICS_STATS_SNAPSHOT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "lib/metrics/io_stats.h"
#include "lib/metrics/server_stats.h"

namespace nbdmgr {

// Request-buffer numbers of an export or of the whole daemon.
struct BufferCounts {
  uint64_t bytes_in_use = 0;
  uint64_t bytes_cached = 0;  // export: held idle by connections (fixed,
                              // grow); daemon: idle in the shared pool
  uint64_t cap_bytes = 0;     // 0: no cap
  // Export: requests refused a buffer by a full cap or their connection's
  // share (they streamed instead; nothing ever waits). Daemon: charges the
  // daemon cap refused.
  uint64_t cap_full = 0;
  // Daemon only: connection reserves in use (outside every cap).
  uint64_t reserve_bytes = 0;
  // Export only: how requests got their buffers.
  uint64_t allocations = 0;  // new buffers obtained from the OS
  uint64_t reuses = 0;       // requests served by an existing buffer
  uint64_t streamed = 0;     // requests moved in chunks, without a buffer
  // Daemon only: the fixed buffers of TLS sessions (TlsEngine::kBufferBytes
  // per TLS connection, outside every cap; bounded by --max-connections).
  uint64_t tls_bytes = 0;
};

// One dirty bitmap of an export.
struct BitmapStats {
  std::string name;
  bool active = true;
  bool consistent = true;
  uint64_t dirty_bytes = 0;
  uint64_t memory_bytes = 0;
};

// Quality of service of an export or a QoS group: requests delayed by
// limits, for how long in total, and how many wait now.
struct QosCounts {
  bool limited = false;  // export: own limits or a group set; group: always
  std::string group;     // export: its QoS group ("" none)
  uint64_t throttled_requests = 0;
  uint64_t throttled_ns = 0;  // export: own and group waits together
  uint64_t waiting = 0;
};

// A QoS group.
struct QosGroupStats {
  std::string name;
  uint64_t members = 0;  // served exports in the group
  QosCounts qos;         // waits at the group's limits
};

struct ExportStats {
  std::string name;
  std::string backend;  // "memory", "file", "null"
  bool draining = false;
  bool failed = false;  // FAILED: not served (counters stay zero)
  std::string failure;  // why
  uint64_t size_bytes = 0;
  uint64_t clients = 0;
  IoCounts io;
  BufferCounts buffers;
  std::vector<BitmapStats> bitmaps;  // by name
  // Overlays only: bytes of the overlay's own clusters (data, zeroed) and
  // partial first writes that copied the rest of a cluster from the base.
  bool overlay = false;
  uint64_t overlay_allocated_bytes = 0;
  uint64_t overlay_zero_bytes = 0;
  uint64_t overlay_copy_ups = 0;
  QosCounts qos;
};

struct DaemonStats {
  std::string version;
  ServerCounts server;
  BufferCounts buffers;
  uint64_t resident_memory_bytes = 0;
  uint64_t open_fds = 0;
  double start_time_seconds = 0;  // Unix time
};

// Every number the daemon reports, taken at one moment: the one model
// behind /metrics, StatsService.GetStats and `nbdctl stats`.
struct StatsSnapshot {
  int64_t time_ns = 0;  // Unix time of the sample
  DaemonStats daemon;
  std::vector<ExportStats> exports;       // sorted by name
  std::vector<QosGroupStats> qos_groups;  // sorted by name
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_METRICS_STATS_SNAPSHOT_H_
