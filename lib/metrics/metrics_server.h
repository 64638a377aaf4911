#ifndef NBDMGR_LIB_METRICS_METRICS_SERVER_H_
#define NBDMGR_LIB_METRICS_METRICS_SERVER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "lib/metrics/stats_snapshot.h"

namespace prometheus {
class Exposer;
}

namespace nbdmgr {

// Serves GET /metrics over HTTP (Prometheus text format), sampling
// `collect` on every scrape (it is called on the HTTP server's threads, so
// it must be thread-safe).
class MetricsServer {
 public:
  // `address` is HOST:PORT (port 0 picks a free one). Unavailable, naming
  // the address, if it cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& address, std::function<StatsSnapshot()> collect);
  ~MetricsServer();

  // HOST:PORT actually bound.
  const std::string& bound() const { return bound_; }

 private:
  class Collector;
  MetricsServer() = default;

  std::shared_ptr<Collector> collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string bound_;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_METRICS_METRICS_SERVER_H_
