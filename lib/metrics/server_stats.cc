#include "lib/metrics/server_stats.h"

#include <chrono>

#include "spdlog/spdlog.h"

namespace nbdmgr {

std::string_view NameOf(Transport t) {
  return t == Transport::kTcp ? "tcp" : "unix";
}

std::string_view NameOf(HandshakeFailure f) {
  static constexpr std::string_view kNames[kNumHandshakeFailures] = {
      "client_closed", "protocol_error", "limit",    "timeout",
      "tls_required",  "tls_handshake",  "io_error", "shutdown"};
  return kNames[static_cast<size_t>(f)];
}

std::string_view NameOf(Refusal r) {
  static constexpr std::string_view kNames[kNumRefusals] = {
      "max_connections", "max_clients",      "handshake_timeout",
      "idle_timeout",    "too_many_options", "option_too_long",
      "tls_required",    "stall_payload",    "stall_replies"};
  return kNames[static_cast<size_t>(r)];
}

void ServerStats::Refused(Refusal r, std::string_view peer,
                          std::string_view detail) {
  const size_t i = static_cast<size_t>(r);
  refusals_[i].fetch_add(1, std::memory_order_relaxed);
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  int64_t last = last_logged_ns_[i].load(std::memory_order_relaxed);
  constexpr int64_t kInterval = 10'000'000'000;  // 10 s
  if ((last != 0 && now - last < kInterval) ||
      !last_logged_ns_[i].compare_exchange_strong(last, now)) {
    unlogged_[i].fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const uint64_t skipped = unlogged_[i].exchange(0, std::memory_order_relaxed);
  if (skipped > 0) {
    spdlog::warn(
        "{}: refused ({}): {} [{} more refusals for {} since the last "
        "message]",
        peer, NameOf(r), detail, skipped, NameOf(r));
  } else {
    spdlog::warn("{}: refused ({}): {}", peer, NameOf(r), detail);
  }
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
    case absl::StatusCode::kUnauthenticated:
      return HandshakeFailure::kTlsHandshake;
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
  for (size_t i = 0; i < kNumRefusals; ++i) {
    out.refusals[i] = refusals_[i].load(std::memory_order_relaxed);
  }
  return out;
}

}  // namespace nbdmgr
