#ifndef NBDMGR_LIB_CONVERT_STATS_CONVERT_H_
#define NBDMGR_LIB_CONVERT_STATS_CONVERT_H_

// StatsSnapshot <-> nbdmgr.v1.Stats. Both directions, so nbdctl can turn
// what GetStats returns back into the model behind /metrics.

#include "lib/metrics/stats_snapshot.h"
#include "nbdmgr/v1/stats.pb.h"

namespace nbdmgr {

v1::Stats StatsToProto(const StatsSnapshot& s);
// Unknown op, result, transport or reason names are skipped; a latency
// histogram is used only if its buckets match ours.
StatsSnapshot StatsFromProto(const v1::Stats& p);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_CONVERT_STATS_CONVERT_H_
