#ifndef NBDMGR_LIB_METRICS_SERVER_STATS_H_
#define NBDMGR_LIB_METRICS_SERVER_STATS_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"

namespace nbdmgr {

enum class Transport : uint8_t { kTcp, kUnix };
inline constexpr size_t kNumTransports = 2;
std::string_view NameOf(Transport t);  // "tcp", "unix"

// Why a connection ended before it reached transmission.
enum class HandshakeFailure : uint8_t {
  kClientClosed,   // ABORT, or the client hung up
  kProtocolError,  // bad magic, unknown flags, unknown EXPORT_NAME...
  kLimit,          // a negotiation limit (option count, length...)
  kTimeout,        // handshake deadline passed
  kTlsRequired,    // a client that would not start TLS where required
  kTlsHandshake,   // the TLS handshake failed (bad certificate, PSK...)
  kIoError,        // the socket failed
  kShutdown,       // the daemon or the export went away
};
inline constexpr size_t kNumHandshakeFailures = 8;
// "client_closed", "protocol_error", ...: the `reason` label.
std::string_view NameOf(HandshakeFailure f);
// The reason for a failed negotiation's status (by canonical code).
HandshakeFailure HandshakeFailureFromStatus(const absl::Status& s);

// A limit that made the server refuse or drop a client.
enum class Refusal : uint8_t {
  kMaxConnections,    // the daemon-wide connection cap
  kMaxClients,        // an export's client cap
  kHandshakeTimeout,  // no export chosen within the handshake deadline
  kIdleTimeout,       // no request within the idle timeout
  kTooManyOptions,    // option count cap before an export is chosen
  kOptionTooLong,     // option length cap (answered ERR_TOO_BIG)
  kTlsRequired,       // an option refused with ERR_TLS_REQD
  kStallPayload,      // a request's payload stopped arriving (stall timeout)
  kStallReplies,      // the client stopped reading replies (stall timeout)
};
inline constexpr size_t kNumRefusals = 9;
// "max_connections", "max_clients", ...: the `reason` label.
std::string_view NameOf(Refusal r);

// A plain copy of ServerStats.
struct ServerCounts {
  uint64_t connections[kNumTransports] = {};        // open now
  uint64_t connections_total[kNumTransports] = {};  // accepted ever
  uint64_t handshake_failures[kNumHandshakeFailures] = {};
  uint64_t refusals[kNumRefusals] = {};
};

// Daemon-wide connection counters. Updated once per connection (accept,
// close, failed handshake), never per request. Thread-safe.
class ServerStats {
 public:
  void Opened(Transport t) {
    connections_[Index(t)].fetch_add(1, std::memory_order_relaxed);
    total_[Index(t)].fetch_add(1, std::memory_order_relaxed);
  }
  void Closed(Transport t) {
    connections_[Index(t)].fetch_sub(1, std::memory_order_relaxed);
  }
  void HandshakeFailed(HandshakeFailure f) {
    failures_[static_cast<size_t>(f)].fetch_add(1, std::memory_order_relaxed);
  }
  // Counts a refusal and logs it (`peer`, `detail`) at most once per
  // 10 seconds per reason, with the number of refusals not logged since.
  void Refused(Refusal r, std::string_view peer, std::string_view detail);
  ServerCounts Snapshot() const;

 private:
  static size_t Index(Transport t) { return static_cast<size_t>(t); }
  std::atomic<uint64_t> connections_[kNumTransports] = {};
  std::atomic<uint64_t> total_[kNumTransports] = {};
  std::atomic<uint64_t> failures_[kNumHandshakeFailures] = {};
  std::atomic<uint64_t> refusals_[kNumRefusals] = {};
  std::atomic<int64_t> last_logged_ns_[kNumRefusals] = {};
  std::atomic<uint64_t> unlogged_[kNumRefusals] = {};
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_METRICS_SERVER_STATS_H_
