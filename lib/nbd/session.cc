#include "lib/nbd/session.h"

#include <boost/asio/experimental/awaitable_operators.hpp>

#include "lib/nbd/reply_writer.h"
#include "lib/util/strings.h"
#include "spdlog/spdlog.h"

namespace nbdmgr::nbd {

using namespace boost::asio::experimental::awaitable_operators;

Session::Session(Socket socket, const ExportRegistry& registry,
                 SessionOptions options)
    : conn_(std::move(socket)), registry_(registry), options_(options) {}

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

asio::awaitable<void> Session::Run() {
  ServerStats* stats = options_.server_stats;
  OpenConnection open(stats,
                      conn_.is_tcp() ? Transport::kTcp : Transport::kUnix);
  absl::StatusOr<NegotiationResult> agreed =
      co_await Negotiate(conn_, registry_, options_.negotiation);
  if (!agreed.ok()) {
    if (stats) {
      stats->HandshakeFailed(stopped_
                                 ? HandshakeFailure::kShutdown
                                 : HandshakeFailureFromStatus(agreed.status()));
    }
    if (absl::IsCancelled(agreed.status())) {
      spdlog::debug("{}: {}", conn_.peer(), agreed.status().message());
    } else {
      spdlog::info("{}: handshake failed: {}", conn_.peer(),
                   agreed.status().message());
    }
    conn_.Close();
    co_return;
  }
  if (stopped_) {  // Stop() raced with the last option
    if (stats) stats->HandshakeFailed(HandshakeFailure::kShutdown);
    conn_.Close();
    co_return;
  }
  std::shared_ptr<Export> e = agreed->export_;
  spdlog::info("{}: connected to export \"{}\"{}", conn_.peer(), e->name(),
               agreed->structured_replies ? " (structured replies)" : "");
  transmitting_ = true;
  export_in_use_ = e.get();
  e->AddClient();
  {
    std::unique_ptr<ConnectionBuffers> buffers = e->buffers().NewConnection();
    ScopedIoStats io(options_.count_requests ? &e->io_stats() : nullptr);
    ReplyWriter writer(conn_, io.get());
    Transmission tx(conn_, writer, *buffers, *agreed, options_.transmission);
    co_await (tx.ReadLoop() && writer.Run());
    spdlog::info("{}: export \"{}\" session ended ({})", conn_.peer(),
                 e->name(), tx.end_reason());
  }
  e->RemoveClient();
  export_in_use_ = nullptr;
  conn_.Close();
}

void Session::Stop() {
  stopped_ = true;
  if (transmitting_) {
    conn_.ShutdownRead();
  } else {
    conn_.Close();
  }
}

void Session::Abort() {
  stopped_ = true;
  conn_.Close();
}

}  // namespace nbdmgr::nbd
