#ifndef NBDMGR_LIB_EXPORT_EXPORT_CONFIG_H_
#define NBDMGR_LIB_EXPORT_EXPORT_CONFIG_H_

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lib/backend/file_backend.h"
#include "lib/buffer/buffer_policy.h"
#include "lib/qos/qos_limits.h"

namespace nbdmgr {

enum class BackendKind { kMemory, kFile, kNull, kRbd };
std::string_view NameOf(BackendKind kind);

// Whether clients of an export must use TLS (NBD_OPT_STARTTLS).
enum class TlsMode {
  kOff,       // no TLS needed (a client that started TLS may use it too)
  kOptional,  // the same access as kOff, but needs daemon TLS credentials,
              // so clients can choose TLS
  kRequire,   // only over TLS: hidden from LIST and refused in clear
};
std::string_view NameOf(TlsMode mode);  // "off", "optional", "require"
// InvalidArgument listing the valid names.
absl::StatusOr<TlsMode> ParseTlsMode(std::string_view name);

// Block size constraints advertised with NBD_INFO_BLOCK_SIZE.
struct BlockSizes {
  uint32_t minimum = 1;
  uint32_t preferred = 4096;
  uint32_t maximum_payload = 32 * 1024 * 1024;
};
// The largest maximum_payload an export may advertise (request buffers are
// sized for it).
inline constexpr uint32_t kMaxPayloadLimit = 32 * 1024 * 1024;

// Where an rbd export's image lives, and as whom the daemon reaches it.
struct RbdLocation {
  std::string pool;       // required
  std::string image;      // required
  std::string ns;         // RADOS namespace; "" = the pool's default
  std::string snapshot;   // "" = the image itself; a snapshot is read-only
  std::string ceph_conf;  // "" = librados' default (/etc/ceph/ceph.conf)
  std::string ceph_user;  // rados id (client.ID); "" = admin
  bool operator==(const RbdLocation&) const = default;
};

// Everything that defines an export, as given by an operator. Plain data;
// validated by ValidateExportConfig before anything is opened.
struct ExportConfig {
  std::string name;
  std::string description;
  BackendKind backend = BackendKind::kMemory;
  std::string path;              // kFile
  std::optional<uint64_t> size;  // required for kMemory and kNull; for kFile,
                                 // the size a created file gets, or must have
  bool create = true;            // kFile: create a missing file (needs size)
  FileIo io = FileIo::kAuto;     // kFile: io_uring or the thread pool
  // kFile: `path` is a copy-on-write overlay (OverlayBackend) on this base:
  // another export's name, or an absolute path (a file opened read-only).
  std::string base;
  uint32_t cluster_size = 0;  // overlay: the copy-on-write unit (0: 64 KiB)
  RbdLocation rbd;            // kRbd (size, if set: create a missing
                              // image with it, or the size it must have)
  bool read_only = false;
  BlockSizes block_sizes;
  BufferSettings buffers;
  TlsMode tls = TlsMode::kOff;
  uint32_t max_clients = 0;  // connected clients at once; 0: no cap
  // A client that stops sending a request's payload, or stops reading
  // replies, for this long is disconnected; unset: the daemon's
  // --stall-timeout; 0: never.
  std::optional<std::chrono::milliseconds> stall_timeout;
  // Quality of service: the export's own limits (none set: unlimited), and
  // the QoS group whose limits it shares ("" for none; the group must
  // exist when the export is served).
  QosLimits qos;
  std::string qos_group;
};

// A QoS group as given by an operator (--qos-group, the config file).
struct QosGroupConfig {
  std::string name;
  QosLimits limits;
  bool operator==(const QosGroupConfig&) const = default;
};
// The most QoS groups a daemon holds.
inline constexpr size_t kMaxQosGroups = 1024;

// The longest stall timeout an export or the daemon may set.
inline constexpr std::chrono::hours kMaxStallTimeout{24};
// The longest pool_idle_release an export may set.
inline constexpr std::chrono::hours kMaxPoolIdleRelease{24 * 365};
// The largest export NBD can describe (sizes and offsets are signed 64-bit
// in clients such as qemu and libnbd); also the largest memory cap.
inline constexpr uint64_t kMaxExportSize = INT64_MAX;
// The default of the most exports a daemon holds (--max-exports).
inline constexpr uint32_t kDefaultMaxExports = 512;
// Longest description, and longest file path.
inline constexpr size_t kMaxDescriptionBytes = 4096;
inline constexpr size_t kMaxPathBytes = 4095;

// NBD's rules: minimum a power of two <= 64 KiB; preferred a power of two
// >= max(minimum, 512); maximum_payload a multiple of minimum, >= preferred
// and <= kMaxPayloadLimit. InvalidArgument naming the field.
absl::Status ValidateBlockSizes(const BlockSizes& b);

// Names of exports and their bitmaps: 1 to 128 characters of
// [A-Za-z0-9._:-], starting with a letter or digit (they appear in resource
// names, metric labels and file names). InvalidArgument saying `what`
// ("export name") is wrong and how.
absl::Status ValidateName(std::string_view what, std::string_view name);
absl::Status ValidateExportName(std::string_view name);
// QoS group names follow the same rule.
absl::Status ValidateQosGroupName(std::string_view name);
// The name and the limits (ValidateQosLimits). InvalidArgument.
absl::Status ValidateQosGroupConfig(const QosGroupConfig& group);

// The one validation of an export's configuration, shared by the command
// line, the config file, CreateExport, UpdateExport (on the updated
// config) and the state loader: names, required keys, every size and
// duration range, and strings that must be UTF-8. InvalidArgument naming
// the field.
absl::Status ValidateExportConfig(const ExportConfig& config);

// Parses a command-line export spec: comma-separated key=value pairs, e.g.
// "name=disk0,backend=file,path=/var/lib/disk0.img" or
// "name=scratch,backend=memory,size=1GiB,read-only=true,description=Scratch",
// plus buffer keys: buffer-strategy=pool, memory-cap=256MiB,
// pool-idle-release=5s, tls=off|optional|require, max-clients=N,
// stall-timeout=DUR, io=auto|io_uring|threads (file), base=EXPORT|PATH and
// cluster-size=N (file: an overlay), the QoS keys iops=, iops-read=,
// iops-write=, bandwidth=SIZE, bandwidth-read=SIZE, bandwidth-write=SIZE
// (per second), each with a "-burst" twin (iops-burst=N,
// bandwidth-burst=SIZE...), and qos-group=NAME, pool=, image=,
// namespace=, snapshot=, ceph-conf=, ceph-user= (rbd) and the block sizes:
// min-block-size=N, preferred-block-size=N, max-payload=N. A literal comma
// inside a value is written "\,". Returns InvalidArgument naming the bad key or
// value; the result is also validated.
absl::StatusOr<ExportConfig> ParseExportSpec(std::string_view spec);
// Parses a --qos-group spec: "name=NAME" plus the QoS keys above, e.g.
// "name=tenant1,iops=5000,bandwidth=200MiB". InvalidArgument naming the
// bad key or value; the result is validated.
absl::StatusOr<QosGroupConfig> ParseQosGroupSpec(std::string_view spec);
// The limits set in `limits` as spec keys, e.g.
// "iops=5000,iops-burst=500,bandwidth=200MiB" (sizes exact); "" for none.
std::string FormatQosSpec(const QosLimits& limits);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_EXPORT_EXPORT_CONFIG_H_
