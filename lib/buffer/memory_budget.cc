#include "lib/buffer/memory_budget.h"

#include <algorithm>

namespace nbdmgr {

void MemoryBudget::NotePeak(uint64_t used) {
  uint64_t peak = peak_.load(std::memory_order_relaxed);
  while (used > peak &&
         !peak_.compare_exchange_weak(peak, used, std::memory_order_relaxed)) {
  }
}

bool MemoryBudget::TryCharge(uint64_t n) {
  const uint64_t cap = cap_.load(std::memory_order_relaxed);
  uint64_t used = used_.load(std::memory_order_relaxed);
  for (;;) {
    if (cap != 0 && (n > cap || used > cap - n)) {
      refused_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    if (used_.compare_exchange_weak(used, used + n,
                                    std::memory_order_relaxed)) {
      NotePeak(used + n);
      return true;
    }
  }
}

void MemoryBudget::Release(uint64_t n) {
  uint64_t used = used_.load(std::memory_order_relaxed);
  while (!used_.compare_exchange_weak(used, used - std::min(used, n),
                                      std::memory_order_relaxed)) {
  }
}

uint64_t MemoryBudget::headroom() const {
  const uint64_t cap = cap_.load(std::memory_order_relaxed);
  if (cap == 0) return UINT64_MAX;
  const uint64_t used = used_.load(std::memory_order_relaxed);
  return cap > used ? cap - used : 0;
}

MemoryBudgetStats MemoryBudget::stats() const {
  return MemoryBudgetStats{cap_.load(std::memory_order_relaxed),
                           used_.load(std::memory_order_relaxed),
                           peak_.load(std::memory_order_relaxed),
                           refused_.load(std::memory_order_relaxed)};
}

}  // namespace nbdmgr
