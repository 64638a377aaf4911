#include "lib/nbd/session.h"

#include <algorithm>
#include <boost/asio/experimental/awaitable_operators.hpp>

#include "absl/strings/str_cat.h"
#include "lib/nbd/reply_writer.h"
#include "lib/util/strings.h"
#include "spdlog/spdlog.h"

namespace nbdmgr::nbd {

using namespace boost::asio::experimental::awaitable_operators;

Session::Session(Socket socket, const ExportRegistry& registry,
                 SessionOptions options)
    : conn_(std::move(socket)),
      registry_(registry),
      options_(options),
      timer_(conn_.socket().get_executor()) {}

Session::~Session() = default;

namespace {

// Counts a connection as open for its scope.
class OpenConnection {
 public:
  OpenConnection(ServerStats* stats, Transport t) : stats_(stats), t_(t) {
    if (stats_) stats_->Opened(t_);
  }
  ~OpenConnection() {
    if (stats_) stats_->Closed(t_);
  }
  OpenConnection(const OpenConnection&) = delete;
  OpenConnection& operator=(const OpenConnection&) = delete;

 private:
  ServerStats* stats_;
  Transport t_;
};

}  // namespace

void Session::OnHandshakeDeadline() {
  if (!negotiating_ || stopped_) return;
  timed_out_ = true;
  if (options_.server_stats != nullptr) {
    options_.server_stats->Refused(
        Refusal::kHandshakeTimeout, conn_.peer(),
        absl::StrCat("no export chosen within ",
                     options_.handshake_timeout.count(), " ms"));
  }
  conn_.Close();
}

std::chrono::milliseconds Session::StallTimeout() const {
  const int64_t own =
      export_in_use_ != nullptr ? export_in_use_->stall_timeout_ms() : -1;
  return own >= 0 ? std::chrono::milliseconds(own) : options_.stall_timeout;
}

void Session::ScheduleWatch() {
  std::chrono::milliseconds period = std::chrono::milliseconds::max();
  if (options_.idle_timeout.count() > 0) period = options_.idle_timeout / 4;
  if (std::chrono::milliseconds stall = StallTimeout(); stall.count() > 0) {
    period = std::min(period, stall / 4);
  }
  // The export's stall timeout may change while we run: look again at
  // least once a second.
  period = std::clamp(period, std::chrono::milliseconds(10),
                      std::chrono::milliseconds(1000));
  timer_.expires_after(period);
  timer_.async_wait([self = shared_from_this()](const ErrorCode& ec) {
    if (!ec && self->tx_ != nullptr) self->Watch();
  });
}

void Session::DropStalled(Refusal why, std::chrono::milliseconds timeout) {
  if (options_.server_stats != nullptr) {
    options_.server_stats->Refused(
        why, conn_.peer(),
        absl::StrCat(why == Refusal::kStallPayload
                         ? "request payload stopped arriving"
                         : "client stopped reading replies",
                     " for ", timeout.count(), " ms; disconnected"));
  }
  // Everything pending fails: the reader ends (a request waiting on QoS
  // limits too), the writer fails and drops what is queued, and every
  // lease and pin comes back.
  if (tx_ != nullptr) tx_->DropQosWaits();
  conn_.Close();
}

void Session::Watch() {
  const auto now = std::chrono::steady_clock::now();
  if (const std::chrono::milliseconds stall = StallTimeout();
      stall.count() > 0) {
    // Waiting on the client with no byte moving since the last check?
    const uint64_t in = conn_.read_progress();
    const bool in_moved = in != in_seen_;
    if (!conn_.awaiting_payload() || in_moved) {
      in_seen_ = in;
      in_since_ = now;
    } else if (now - in_since_ >= stall) {
      DropStalled(Refusal::kStallPayload, stall);
      return;
    }
    // A client busy sending (a long WRITE payload) is not ignoring its
    // replies: only a writer stuck while nothing else moves is a stall.
    const uint64_t out = conn_.write_progress();
    if (!conn_.writing() || out != out_seen_ || in_moved) {
      out_seen_ = out;
      out_since_ = now;
    } else if (now - out_since_ >= stall) {
      DropStalled(Refusal::kStallReplies, stall);
      return;
    }
  }
  if (options_.idle_timeout.count() > 0) {
    const uint64_t n = tx_->requests_read();
    if (n != idle_seen_ || writer_->in_flight() > 0) {
      idle_seen_ = n;
      idle_since_ = now;
    } else if (now - idle_since_ >= options_.idle_timeout) {
      if (options_.server_stats != nullptr) {
        options_.server_stats->Refused(
            Refusal::kIdleTimeout, conn_.peer(),
            absl::StrCat("no request for ", options_.idle_timeout.count(),
                         " ms"));
      }
      conn_.ShutdownRead();  // the reader ends; the writer finishes
      return;
    }
  }
  ScheduleWatch();
}

asio::awaitable<void> Session::Run() {
  ServerStats* stats = options_.server_stats;
  OpenConnection open(stats,
                      conn_.is_tcp() ? Transport::kTcp : Transport::kUnix);
  if (options_.handshake_timeout.count() > 0) {
    timer_.expires_after(options_.handshake_timeout);
    timer_.async_wait([self = shared_from_this()](const ErrorCode& ec) {
      if (!ec) self->OnHandshakeDeadline();
    });
  }
  absl::StatusOr<NegotiationResult> agreed =
      co_await Negotiate(conn_, registry_, options_.negotiation);
  negotiating_ = false;
  timer_.cancel();
  if (!agreed.ok() && timed_out_) {
    agreed = absl::DeadlineExceededError("handshake deadline passed");
  }
  if (!agreed.ok()) {
    if (stats) {
      stats->HandshakeFailed(stopped_
                                 ? HandshakeFailure::kShutdown
                                 : HandshakeFailureFromStatus(agreed.status()));
    }
    // Debug only: a hostile client could flood the log. Refusals are
    // logged (rate-limited) where they happen; all are counted in metrics.
    spdlog::debug("{}: handshake failed: {}", conn_.peer(),
                  agreed.status().message());
    conn_.Close();
    co_return;
  }
  if (stopped_) {  // Stop() raced with the last option
    if (stats) stats->HandshakeFailed(HandshakeFailure::kShutdown);
    agreed->export_->RemoveClient();
    conn_.Close();
    co_return;
  }
  std::shared_ptr<Export> e = agreed->export_;
  spdlog::info("{}: connected to export \"{}\"{}", conn_.peer(), e->name(),
               agreed->structured_replies ? " (structured replies)" : "");
  transmitting_ = true;
  export_in_use_ = e.get();  // Negotiate() counted us in e->clients()
  co_await Transmit(*agreed);
  e->RemoveClient();
  export_in_use_ = nullptr;
  conn_.Close();
}

asio::awaitable<void> Session::Transmit(const NegotiationResult& agreed) {
  const std::shared_ptr<Export>& e = agreed.export_;
  std::unique_ptr<ConnectionBuffers> buffers = e->buffers().NewConnection();
  ScopedIoStats io(options_.count_requests ? &e->io_stats() : nullptr);
  ReplyWriter writer(conn_, io.get());
  Transmission tx(conn_, writer, *buffers, agreed, options_.transmission);
  tx_ = &tx;
  writer_ = &writer;
  idle_since_ = in_since_ = out_since_ = std::chrono::steady_clock::now();
  ScheduleWatch();
  bool broken = false;
  try {
    co_await (tx.ReadLoop() && writer.Run());
  } catch (const std::exception& ex) {
    spdlog::error("{}: session failed: {}", conn_.peer(), ex.what());
    broken = true;
  } catch (...) {
    spdlog::error("{}: session failed", conn_.peer());
    broken = true;
  }
  if (broken) {
    // Requests may still run on the blocking pool and hold the writer,
    // the transmission and their leases: drop their replies and wait for
    // them before those go away.
    conn_.Close();
    writer.Abandon();
    co_await writer.WaitInFlightBelow(1);
  }
  tx_ = nullptr;
  writer_ = nullptr;
  timer_.cancel();
  spdlog::info("{}: export \"{}\" session ended ({})", conn_.peer(), e->name(),
               tx.end_reason());
}

void Session::Stop() {
  stopped_ = true;
  if (tx_ != nullptr) tx_->StopReading();
  if (transmitting_) {
    conn_.ShutdownRead();
  } else {
    conn_.Close();
  }
}

void Session::Abort() {
  stopped_ = true;
  if (tx_ != nullptr) tx_->DropQosWaits();
  conn_.Close();
}

}  // namespace nbdmgr::nbd
