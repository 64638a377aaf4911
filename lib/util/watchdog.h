#ifndef NBDMGR_LIB_UTIL_WATCHDOG_H_
#define NBDMGR_LIB_UTIL_WATCHDOG_H_

#include <chrono>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "lib/util/mutex.h"

namespace nbdmgr {

// Runs `expire` on a thread of its own unless destroyed first: a bound on
// work that may never finish (a call into a storage system that stopped
// answering). `expire` usually ends the process; if it returns, the
// watchdog is spent. Thread-safe.
class Watchdog {
 public:
  using Clock = std::chrono::steady_clock;

  Watchdog(Clock::duration timeout, std::function<void()> expire);
  // Disarms; waits for a running `expire` to return.
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Expires `timeout` from now if that is sooner than the deadline set.
  void Shorten(Clock::duration timeout);

 private:
  void Run();

  const std::function<void()> expire_;
  Mutex mu_;
  CondVar changed_;
  Clock::time_point deadline_ ABSL_GUARDED_BY(mu_);
  bool disarmed_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_UTIL_WATCHDOG_H_
