#ifndef NBDMGR_LIB_UTIL_CLOCK_H_
#define NBDMGR_LIB_UTIL_CLOCK_H_

#include <chrono>
#include <cstdint>

namespace nbdmgr {

// Nanoseconds on the steady clock: request latencies, QoS deadlines (the
// one time base of every Throttle on the data path).
inline int64_t SteadyNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_UTIL_CLOCK_H_
