#include "lib/util/heap_trim.h"

#include <malloc.h>

#include <atomic>

namespace nbdmgr {
namespace {
std::atomic<uint64_t> freed_since_trim{0};
}  // namespace

void NoteHeapFreed(uint64_t bytes) {
  freed_since_trim.fetch_add(bytes, std::memory_order_relaxed);
}

bool TrimHeapIfWorthIt(uint64_t threshold) {
  if (freed_since_trim.load(std::memory_order_relaxed) < threshold) {
    return false;
  }
  freed_since_trim.store(0, std::memory_order_relaxed);
  // Walks every arena and madvise()s whole free pages away.
  ::malloc_trim(0);
  return true;
}

}  // namespace nbdmgr
