#ifndef NBDMGR_LIB_UTIL_HEAP_TRIM_H_
#define NBDMGR_LIB_UTIL_HEAP_TRIM_H_

#include <cstdint>

namespace nbdmgr {

// Large frees through malloc (memory-export pages) stay in glibc's arenas:
// a page freed in another thread's arena, or below a live allocation, is
// never returned to the OS by free() itself, so a trimmed or rewritten
// export would keep its old memory resident. Code that frees bulk memory
// notes it here; a periodic TrimHeapIfWorthIt() gives it back. Thread-safe.

// Records `bytes` freed with free().
void NoteHeapFreed(uint64_t bytes);

// Returns free heap memory to the OS (malloc_trim) if at least
// `threshold` bytes were noted since the last trim; true if it trimmed.
bool TrimHeapIfWorthIt(uint64_t threshold);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_UTIL_HEAP_TRIM_H_
