#ifndef NBDMGR_LIB_NBD_SESSION_H_
#define NBDMGR_LIB_NBD_SESSION_H_

#include <boost/asio/awaitable.hpp>
#include <boost/asio/thread_pool.hpp>
#include <memory>

#include "lib/export/export_registry.h"
#include "lib/metrics/server_stats.h"
#include "lib/nbd/connection.h"
#include "lib/nbd/negotiation.h"
#include "lib/nbd/transmission.h"

namespace nbdmgr::nbd {

struct SessionOptions {
  NegotiationLimits negotiation;
  TransmissionOptions transmission;
  // Daemon-wide connection counters; may be null.
  ServerStats* server_stats = nullptr;
  // Per-request counters (the export's io_stats()); off saves their cost.
  bool count_requests = true;
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
  Connection conn_;
  const ExportRegistry& registry_;
  SessionOptions options_;
  bool transmitting_ = false;
  const Export* export_in_use_ = nullptr;
  bool stopped_ = false;
};

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_SESSION_H_
