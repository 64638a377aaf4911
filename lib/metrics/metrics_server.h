#ifndef NBDMGR_LIB_METRICS_METRICS_SERVER_H_
#define NBDMGR_LIB_METRICS_METRICS_SERVER_H_

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "lib/metrics/stats_snapshot.h"

namespace nbdmgr {

// Limits that keep slow or idle HTTP clients from starving scrapes.
struct MetricsServerOptions {
  // A connection must send a whole request head within this long of being
  // accepted (or, kept alive, of its previous response); else it is closed.
  std::chrono::milliseconds header_timeout{10'000};
  // Longest request head; a longer one is answered 431 and closed.
  size_t max_header_bytes = 8192;
  // A response must be written within this long; else the connection is
  // closed.
  std::chrono::milliseconds write_timeout{10'000};
  // Connections at once. Accepting one more first closes the connection
  // that has waited longest for a request head (or, if none is waiting,
  // the oldest one), so connections that never finish a request cannot lock
  // scrapers out. 0 means no cap.
  size_t max_connections = 1024;
};

// Serves the Prometheus text exposition of `collect()` over HTTP/1.1 on
// GET (and HEAD) /metrics, with keep-alive. Other paths get 404, other
// methods 405. Slow clients cost no thread: everything runs on one thread of
// the server's own.
//
// Thread-safe: bound() may be called from any thread; destroy it from any
// thread but that of a `collect` call.
class MetricsServer {
 public:
  // Binds `address`, HOST:PORT (HOST an IPv4 address, a bracketed IPv6 one
  // or a name such as localhost; port 0 picks a free one), and starts
  // serving. `collect` is called on the server's thread, one scrape at a
  // time, and must stay callable until the server is destroyed.
  // InvalidArgument if `address` is not HOST:PORT; Unavailable, with a
  // message starting "metrics listener ADDRESS", if it cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& address, std::function<StatsSnapshot()> collect,
      MetricsServerOptions options = {});

  // Closes the listener and every connection, and waits for the server's
  // thread (and so for a scrape in progress) to end.
  ~MetricsServer();

  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // HOST:PORT actually bound (HOST as given to Start()).
  const std::string& bound() const { return bound_; }

 private:
  class Impl;
  MetricsServer() = default;

  std::unique_ptr<Impl> impl_;
  std::string bound_;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_METRICS_METRICS_SERVER_H_
