#ifndef NBDMGR_LIB_NBD_SERVER_H_
#define NBDMGR_LIB_NBD_SERVER_H_

#include <sys/types.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "lib/backend/io_ring.h"
#include "lib/export/export_registry.h"
#include "lib/metrics/server_stats.h"
#include "lib/nbd/session.h"
#include "lib/util/listen_address.h"
#include "lib/util/mutex.h"
#include "lib/util/socket_path.h"

namespace nbdmgr::nbd {

struct ServerOptions {
  std::vector<ListenAddress> listen;
  int io_threads = 0;        // 0: one per core
  int blocking_threads = 0;  // 0: 4 per core, at least 8
  // Connections at once, all listeners; more are closed at accept (0: no
  // cap).
  uint32_t max_connections = 0;
  SessionOptions session;
};

// The NBD listeners, the io_context threads and the set of live sessions.
// Each accepted connection is pinned to the least-loaded single-threaded
// io_context, so a session needs no locks. Thread-safe: Shutdown() and the
// accessors may be called from any thread. `registry` must outlive it.
class Server {
 public:
  // Binds every listen address. An existing Unix socket path is replaced
  // only if it is a stale socket (connect() refused); anything else there
  // (not a socket, or a socket a process accepts on) is FailedPrecondition,
  // naming the address, and is left untouched. Unavailable naming the
  // address if binding fails.
  static absl::StatusOr<std::unique_ptr<Server>> Create(
      ServerOptions options, std::shared_ptr<ExportRegistry> registry);
  ~Server();

  // Starts the threads and begins accepting.
  void Start();
  // Stops accepting, lets every session answer what it has read (no new
  // requests are read; idle sessions close at once) for up to `grace`, or
  // until StopWaiting(), then closes what remains, and joins all threads.
  // Removes each Unix socket file that is still the one it bound.
  // Idempotent. Sessions that a backend call keeps from ending within
  // `stuck_wait` of being closed are abandoned (see abandoned()): then
  // nothing is joined or stopped, and the Server must never be destroyed
  // (leak it; the daemon exits without tearing down).
  void Shutdown(std::chrono::milliseconds grace,
                std::chrono::milliseconds stuck_wait = std::chrono::seconds(5));
  // Sessions the last Shutdown() abandoned: 0 after a clean one.
  size_t abandoned() const {
    return abandoned_.load(std::memory_order_relaxed);
  }
  // Makes a Shutdown() in progress, or the next one, stop waiting for
  // sessions: they are closed now. Returns at once; thread-safe.
  void StopWaiting();

  // Asks the sessions transmitting on `e` to stop: gracefully (no new
  // requests read, in-flight ones answered, then closed) or, with `hard`,
  // by closing their sockets now. Returns at once; watch e.clients().
  void StopSessionsOf(const Export& e, bool hard);

  // The bound addresses, with real port numbers for port 0.
  const std::vector<ListenAddress>& bound() const { return bound_; }
  size_t session_count() const;
  // Connection counters (accepted, open, failed handshakes).
  const ServerStats& stats() const { return stats_; }

 private:
  using Acceptor =
      boost::asio::basic_socket_acceptor<boost::asio::generic::stream_protocol>;
  using WorkGuard =
      boost::asio::executor_work_guard<boost::asio::io_context::executor_type>;

  Server(ServerOptions options, std::shared_ptr<ExportRegistry> registry);
  absl::Status Listen(const ListenAddress& addr);
  asio::awaitable<void> AcceptLoop(Acceptor& acceptor);
  // Index of the io_context the next connection is pinned to.
  size_t NextContext();
  void Forget(Session* s);
  // Runs fn on each live session, on that session's executor.
  void PostToSessions(std::function<void(Session&)> fn);

  ServerStats stats_;  // before options_, which points at it
  ServerOptions options_;
  const std::shared_ptr<ExportRegistry> registry_;
  std::vector<std::unique_ptr<boost::asio::io_context>> contexts_;
  // One io_uring per context (null where it could not be made), for file
  // exports' I/O; destroyed before the contexts.
  std::vector<std::shared_ptr<IoRing>> rings_;
  std::vector<WorkGuard> guards_;
  std::vector<std::thread> threads_;
  boost::asio::thread_pool blocking_pool_;
  std::vector<std::unique_ptr<Acceptor>> acceptors_;
  std::vector<ListenAddress> bound_;
  // The Unix socket files bound, to remove only those on exit.
  std::vector<SocketPathClaim> socket_claims_;
  std::atomic<size_t> next_context_{0};
  std::deque<std::atomic<int>> load_;  // live sessions per context
  bool started_ = false;
  bool shut_down_ = false;
  std::atomic<size_t> abandoned_{0};

  mutable Mutex mu_;
  CondVar sessions_changed_;  // a session ended, or StopWaiting()
  bool stop_waiting_ ABSL_GUARDED_BY(mu_) = false;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_SERVER_H_
