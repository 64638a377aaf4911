#ifndef NBDMGR_LIB_DAEMON_DAEMON_CONFIG_H_
#define NBDMGR_LIB_DAEMON_DAEMON_CONFIG_H_

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "google/protobuf/field_mask.pb.h"
#include "lib/export/export_config.h"
#include "lib/tls/tls_context.h"
#include "lib/util/listen_address.h"
#include "nbdmgr/v1/config.pb.h"

namespace nbdmgr {

// The default daemon-wide buffer cap: the smaller of 1 GiB and 1/8 of the
// machine's RAM.
uint64_t DefaultMemoryCap();

// Everything nbdmgrd is started with.
struct DaemonConfig {
  std::vector<ListenAddress> nbd_listen;  // default: tcp:127.0.0.1:10809
  std::vector<ExportConfig> exports;
  // QoS groups exports may join (--qos-group, the config file).
  std::vector<QosGroupConfig> qos_groups;
  // The export clients get when they ask for the empty name; default: the
  // first --export.
  std::string default_export;
  int io_threads = 0;        // 0: one per core
  int blocking_threads = 0;  // 0: automatic
  std::chrono::milliseconds drain_timeout{30000};
  // Daemon-wide request-buffer cap; 0: none.
  uint64_t memory_cap_bytes = DefaultMemoryCap();
  // The most one connection may hold of the daemon cap or its export's cap.
  uint32_t connection_share_percent = kDefaultConnectionSharePercent;
  // The most one connection may hold charged at once (0: no limit).
  uint64_t connection_memory_bytes = kDefaultConnectionMemory;
  std::string log_level = "info";
  // Written (atomically) with one bound address per line once serving.
  std::string ready_file;

  // Control plane (gRPC). Empty control_listen: disabled ("none").
  std::optional<ListenAddress>
      control_listen;  // default unix:/run/nbdmgr/control.sock
  std::string control_tls_cert;
  std::string control_tls_key;
  std::string control_tls_ca;
  bool control_insecure = false;
  std::string state_dir = "/var/lib/nbdmgr";  // "" : nothing persisted
  std::vector<std::string> allow_paths;

  // Prometheus endpoint, HOST:PORT; "" : disabled ("none").
  std::string metrics_listen = "127.0.0.1:9810";
  // Per-request counters (requests, bytes, latency). Off: they stay zero.
  bool request_stats = true;

  // NBD over TLS (STARTTLS): X.509 and/or PSK credentials; empty: no TLS.
  TlsFiles tls;
  // Limits against misbehaving clients.
  std::chrono::milliseconds handshake_timeout{10000};  // 0: none
  std::chrono::milliseconds idle_timeout{0};           // 0: none
  // A client that stops sending a payload or reading replies for this long
  // is disconnected (exports may override); 0: never.
  std::chrono::milliseconds stall_timeout{30000};
  // At start, saved exports still opening after this long (an rbd image
  // on an OSD that does not answer) come up FAILED; 0: wait for them.
  std::chrono::milliseconds open_timeout{60000};
  uint32_t max_connections = 4096;  // 0: no cap
  // Exports held at most (given, created over the API, FAILED).
  uint32_t max_exports = kDefaultMaxExports;
};

// The largest --io-threads and --blocking-threads.
inline constexpr int kMaxThreads = 1024;
// The largest --max-exports.
inline constexpr uint32_t kMaxExportsLimit = 100000;

// A configuration as given, before it is checked: the config file with the
// command line merged over it (ParseDaemonFlags documents the precedence).
struct MergedConfig {
  // The file's fields, each replaced by its flag where one was given;
  // exports: the file's only.
  v1::DaemonConfig settings;
  // The --export specs (parsed and validated by ParseExportSpec), served
  // after the file's exports.
  std::vector<ExportConfig> flag_exports;
  // The --qos-group specs (parsed and validated by ParseQosGroupSpec),
  // after the file's groups.
  std::vector<QosGroupConfig> flag_qos_groups;
  // The --config path, "" if none: errors in a value that came from the
  // file name the file and the field.
  std::string file;
  // The fields set by flags, as paths ("io_threads", "tls.cert_file"):
  // their errors name just the flag, and an empty string given as a flag
  // counts as given (--default-export "" serves no default export).
  google::protobuf::FieldMask from_flags;
};

// The one conversion and validation of nbdmgrd's configuration, file and
// flags alike: every value's syntax and range, defaults for what was not
// given, the file's exports (ExportConfigFromProto), and the rules across
// fields (TLS files that go together, a TCP control address needs TLS,
// export TLS needs daemon TLS, unique export names, --max-exports, the
// default export), and the file's QoS groups (QosGroupConfigFromProto)
// with unique names, at most kMaxQosGroups. InvalidArgument naming the flag
// (and the file and field when the value came from the file).
absl::StatusOr<DaemonConfig> DaemonConfigFromMerged(const MergedConfig& m);

// A human summary of the effective configuration (--check-config).
std::string DescribeConfig(const DaemonConfig& c);

// What --check-config can check beyond the configuration itself, without
// changing anything: every configured export's QoS group is one the daemon
// would find at start, given on the command line, in the config file, or
// saved in `<state_dir>/qos-groups.textproto` (read, never written; a
// missing state directory or file holds none). FailedPrecondition naming
// the export and group; the saved file's own error (naming it) if it
// cannot be read.
absl::Status CheckConfigAgainstState(const DaemonConfig& c);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_DAEMON_DAEMON_CONFIG_H_
