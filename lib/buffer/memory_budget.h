#ifndef NBDMGR_LIB_BUFFER_MEMORY_BUDGET_H_
#define NBDMGR_LIB_BUFFER_MEMORY_BUDGET_H_

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace nbdmgr {

struct MemoryBudgetStats {
  uint64_t cap = 0;      // 0: unlimited
  uint64_t used = 0;     // bytes charged now
  uint64_t peak = 0;     // highest `used` seen
  uint64_t waits = 0;    // charges that had to wait
  uint64_t wait_ns = 0;  // total time spent waiting
  uint64_t waiting = 0;  // charges waiting now
};

// A cap on bytes of request buffers. Charges that do not fit wait in FIFO
// order (so a large request is not starved by small ones) until enough is
// released; the cap can be changed at any time, and lowering it below what
// is in use takes effect as bytes come back. Thread-safe: charged and
// released from any thread; a waiter resumes on its own executor.
class MemoryBudget {
 public:
  // cap == 0 means unlimited.
  explicit MemoryBudget(uint64_t cap = 0) : cap_(cap), cap_mirror_(cap) {}
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  // Charges `n` bytes, waiting while they do not fit. The caller must make
  // sure n <= cap (see Fits) or it may wait until the cap is raised.
  boost::asio::awaitable<void> Charge(uint64_t n);
  // Charges `n` bytes if they fit now and nobody is waiting.
  bool TryCharge(uint64_t n);
  // Charges without checking the cap (memory that is already held).
  void ForceCharge(uint64_t n);
  void Release(uint64_t n);

  // Whether a charge of n can ever succeed under the current cap. Lock-free.
  bool Fits(uint64_t n) const {
    uint64_t cap = cap_mirror_.load(std::memory_order_relaxed);
    return cap == 0 || n <= cap;
  }
  void set_cap(uint64_t cap);
  uint64_t cap() const { return cap_mirror_.load(std::memory_order_relaxed); }
  // cap - used (0 if over), or UINT64_MAX without a cap.
  uint64_t headroom() const;
  MemoryBudgetStats stats() const;

 private:
  struct Waiter {
    uint64_t bytes;
    boost::asio::any_io_executor executor;
    std::function<void()> resume;  // posted to `executor`
  };
  // Grants queued waiters that now fit, in order. Returns what to resume.
  std::deque<Waiter> GrantLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void Resume(std::deque<Waiter> ready);
  bool FitsLocked(uint64_t n) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return cap_ == 0 || used_ + n <= cap_;
  }

  mutable std::mutex mu_;
  uint64_t cap_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> cap_mirror_;  // == cap_, for lock-free reads
  uint64_t used_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t peak_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t waits_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t wait_ns_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<Waiter> waiters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BUFFER_MEMORY_BUDGET_H_
