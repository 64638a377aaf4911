#include "lib/metrics/server_stats.h"

namespace nbdmgr {

std::string_view NameOf(Transport t) {
  return t == Transport::kTcp ? "tcp" : "unix";
}

std::string_view NameOf(HandshakeFailure f) {
  static constexpr std::string_view kNames[kNumHandshakeFailures] = {
      "client_closed", "protocol_error", "limit",   "timeout",
      "tls_required",  "io_error",       "shutdown"};
  return kNames[static_cast<size_t>(f)];
}

HandshakeFailure HandshakeFailureFromStatus(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kCancelled:
      return HandshakeFailure::kClientClosed;
    case absl::StatusCode::kResourceExhausted:
      return HandshakeFailure::kLimit;
    case absl::StatusCode::kDeadlineExceeded:
      return HandshakeFailure::kTimeout;
    case absl::StatusCode::kPermissionDenied:
      return HandshakeFailure::kTlsRequired;
    case absl::StatusCode::kUnavailable:
      return HandshakeFailure::kIoError;
    case absl::StatusCode::kAborted:
      return HandshakeFailure::kShutdown;
    default:
      return HandshakeFailure::kProtocolError;
  }
}

ServerCounts ServerStats::Snapshot() const {
  ServerCounts out;
  for (size_t i = 0; i < kNumTransports; ++i) {
    out.connections[i] = connections_[i].load(std::memory_order_relaxed);
    out.connections_total[i] = total_[i].load(std::memory_order_relaxed);
  }
  for (size_t i = 0; i < kNumHandshakeFailures; ++i) {
    out.handshake_failures[i] = failures_[i].load(std::memory_order_relaxed);
  }
  return out;
}

}  // namespace nbdmgr
