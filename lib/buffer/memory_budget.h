#ifndef NBDMGR_LIB_BUFFER_MEMORY_BUDGET_H_
#define NBDMGR_LIB_BUFFER_MEMORY_BUDGET_H_

#include <atomic>
#include <cstdint>

namespace nbdmgr {

struct MemoryBudgetStats {
  uint64_t cap = 0;      // 0: unlimited
  uint64_t used = 0;     // bytes charged now
  uint64_t peak = 0;     // highest `used` seen
  uint64_t refused = 0;  // TryCharge calls that did not fit
};

// A cap on bytes of request buffers. Charges never wait: a charge that does
// not fit is refused, and the caller takes a path that needs no cap memory
// (the connection's reserve). Nothing can therefore wait for memory held by
// a request that itself waits on a client: no circular wait is possible.
// The cap can be changed at any time; lowering it below what is in use
// takes effect as bytes come back. Thread-safe and lock-free.
class MemoryBudget {
 public:
  // cap == 0 means unlimited.
  explicit MemoryBudget(uint64_t cap = 0) : cap_(cap) {}
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  // Charges `n` bytes if used + n stays within the cap; false (and counted
  // as refused) otherwise.
  bool TryCharge(uint64_t n);
  // Returns `n` charged bytes.
  void Release(uint64_t n);

  void set_cap(uint64_t cap) { cap_.store(cap, std::memory_order_relaxed); }
  uint64_t cap() const { return cap_.load(std::memory_order_relaxed); }
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }
  // cap - used (0 if over), or UINT64_MAX without a cap.
  uint64_t headroom() const;
  MemoryBudgetStats stats() const;

 private:
  void NotePeak(uint64_t used);

  std::atomic<uint64_t> cap_;
  std::atomic<uint64_t> used_{0};
  std::atomic<uint64_t> peak_{0};
  std::atomic<uint64_t> refused_{0};
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BUFFER_MEMORY_BUDGET_H_
