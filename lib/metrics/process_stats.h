#ifndef NBDMGR_LIB_METRICS_PROCESS_STATS_H_
#define NBDMGR_LIB_METRICS_PROCESS_STATS_H_

#include <cstdint>

namespace nbdmgr {

struct ProcessStats {
  uint64_t resident_memory_bytes = 0;
  uint64_t open_fds = 0;
};

// This process's resident memory and open file descriptors, from /proc
// (zeros for what cannot be read).
ProcessStats ReadProcessStats();

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_METRICS_PROCESS_STATS_H_
