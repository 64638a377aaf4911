#ifndef NBDMGR_LIB_NBD_SESSION_H_
#define NBDMGR_LIB_NBD_SESSION_H_

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <memory>

#include "lib/export/export_registry.h"
#include "lib/metrics/server_stats.h"
#include "lib/nbd/connection.h"
#include "lib/nbd/negotiation.h"
#include "lib/nbd/reply_writer.h"
#include "lib/nbd/transmission.h"

namespace nbdmgr::nbd {

struct SessionOptions {
  NegotiationOptions negotiation;
  TransmissionOptions transmission;
  // Daemon-wide connection counters; may be null.
  ServerStats* server_stats = nullptr;
  // Per-request counters (the export's io_stats()); off saves their cost.
  bool count_requests = true;
  // A client that has not chosen an export by then is disconnected
  // (0: no deadline).
  std::chrono::milliseconds handshake_timeout{10000};
  // A transmitting client with nothing in flight that sends no request for
  // this long is disconnected gracefully (0: never).
  std::chrono::milliseconds idle_timeout{0};
  // A transmitting client that stops sending a request's payload, or stops
  // reading replies, for this long is disconnected and everything it held
  // is freed (0: never). The export's own setting, if any, wins.
  std::chrono::milliseconds stall_timeout{30000};
};

// One client connection: negotiation, then transmission with one reader
// and one writer coroutine. Lives on one executor (its socket's): Stop()
// and Abort() must be called there. The registry must outlive the session.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Socket socket, const ExportRegistry& registry,
          SessionOptions options);
  ~Session();

  // Serves the connection until it ends; never throws.
  asio::awaitable<void> Run();

  // Graceful stop: a negotiating client is disconnected; a transmitting one
  // gets no more requests read, and in-flight ones are answered first.
  void Stop();
  // Closes the socket now.
  void Abort();

  // The export this session is transmitting on, or nullptr. Read it on
  // the session's executor.
  const Export* export_in_use() const { return export_in_use_; }

  Socket::executor_type executor() { return conn_.socket().get_executor(); }
  const std::string& peer() const { return conn_.peer(); }

 private:
  // Timer callbacks (they hold a reference to the session).
  void OnHandshakeDeadline();
  // The transmission phase on export `agreed.export_`: a reader and a
  // writer until the client leaves, the stream breaks or the session is
  // stopped; every request read is answered (or dropped if the socket
  // failed) before it returns.
  asio::awaitable<void> Transmit(const NegotiationResult& agreed);
  // The transmission watchdog: idle and stall checks, four times per
  // timeout, so a client is dropped between 1 and 1.25 timeouts in.
  void ScheduleWatch();
  void Watch();
  // The stall timeout in force (the export's, else the daemon's); 0: none.
  std::chrono::milliseconds StallTimeout() const;
  // Drops the connection for a stall: counted, logged, socket closed.
  void DropStalled(Refusal why, std::chrono::milliseconds timeout);

  Connection conn_;
  const ExportRegistry& registry_;
  SessionOptions options_;
  bool transmitting_ = false;
  const Export* export_in_use_ = nullptr;
  bool stopped_ = false;
  bool negotiating_ = true;
  bool timed_out_ = false;
  asio::steady_timer timer_;  // handshake deadline, then idle checks
  // Set while transmitting, for the idle check.
  Transmission* tx_ = nullptr;
  const ReplyWriter* writer_ = nullptr;
  uint64_t idle_seen_ = 0;  // requests read at the last check
  std::chrono::steady_clock::time_point idle_since_;
  // Stall checks: the progress counters seen last, and since when they
  // have not moved while the session waited on the client.
  uint64_t in_seen_ = 0;
  uint64_t out_seen_ = 0;
  std::chrono::steady_clock::time_point in_since_;
  std::chrono::steady_clock::time_point out_since_;
};

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_SESSION_H_
