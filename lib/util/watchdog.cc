#include "lib/util/watchdog.h"

#include <utility>

namespace nbdmgr {

Watchdog::Watchdog(Clock::duration timeout, std::function<void()> expire)
    : expire_(std::move(expire)),
      deadline_(Clock::now() + timeout),
      thread_([this] { Run(); }) {}

Watchdog::~Watchdog() {
  {
    MutexLock lock(&mu_);
    disarmed_ = true;
    changed_.SignalAll();
  }
  thread_.join();
}

void Watchdog::Shorten(Clock::duration timeout) {
  MutexLock lock(&mu_);
  deadline_ = std::min(deadline_, Clock::now() + timeout);
  changed_.SignalAll();
}

void Watchdog::Run() {
  MutexLock lock(&mu_);
  while (!disarmed_) {
    const Clock::time_point now = Clock::now();
    if (now >= deadline_) {
      lock.Release();
      expire_();
      return;
    }
    const Clock::time_point deadline = deadline_;
    changed_.WaitFor(&mu_, deadline - now,
                     [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                       return disarmed_ || deadline_ != deadline;
                     });
  }
}

}  // namespace nbdmgr
