#include "lib/metrics/metrics_server.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "lib/metrics/exposition.h"
#include "prometheus/collectable.h"
#include "prometheus/exposer.h"

namespace nbdmgr {

class MetricsServer::Collector final : public prometheus::Collectable {
 public:
  explicit Collector(std::function<StatsSnapshot()> collect)
      : collect_(std::move(collect)) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    return ToMetricFamilies(collect_());
  }

 private:
  std::function<StatsSnapshot()> collect_;
};

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& address, std::function<StatsSnapshot()> collect) {
  std::unique_ptr<MetricsServer> s(new MetricsServer());
  s->collector_ = std::make_shared<Collector>(std::move(collect));
  // prometheus-cpp (civetweb) reports bind failures by throwing; this is the
  // edge where that becomes a Status.
  try {
    s->exposer_ =
        std::make_unique<prometheus::Exposer>(std::vector<std::string>{
            "listening_ports", address, "num_threads", "2"});
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "metrics listener ", address, ": cannot listen (", e.what(), ")"));
  }
  s->exposer_->RegisterCollectable(s->collector_);
  std::vector<int> ports = s->exposer_->GetListeningPorts();
  std::string host = address.substr(0, address.rfind(':'));
  s->bound_ = ports.empty() ? address : absl::StrCat(host, ":", ports.front());
  return s;
}

MetricsServer::~MetricsServer() = default;

}  // namespace nbdmgr
