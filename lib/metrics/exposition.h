#ifndef NBDMGR_LIB_METRICS_EXPOSITION_H_
#define NBDMGR_LIB_METRICS_EXPOSITION_H_

#include <string>
#include <vector>

#include "lib/metrics/stats_snapshot.h"
#include "prometheus/metric_family.h"

namespace nbdmgr {

// The snapshot as Prometheus metric families (names `nbdmgr_*` in base
// units with an `export` label, plus the standard `process_*` ones).
std::vector<prometheus::MetricFamily> ToMetricFamilies(const StatsSnapshot& s);

// The Prometheus text exposition format of the snapshot.
std::string ToPrometheusText(const StatsSnapshot& s);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_METRICS_EXPOSITION_H_
