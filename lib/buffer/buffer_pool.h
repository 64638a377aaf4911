#ifndef NBDMGR_LIB_BUFFER_BUFFER_POOL_H_
#define NBDMGR_LIB_BUFFER_BUFFER_POOL_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "lib/util/mutex.h"

namespace nbdmgr {

// Counters of a BufferPool; a consistent-enough snapshot (each field is read
// atomically, not all together).
struct BufferPoolStats {
  uint64_t bytes_in_use = 0;    // handed out and not yet returned
  uint64_t bytes_cached = 0;    // idle in the free lists
  uint64_t allocations = 0;     // buffers obtained from the OS
  uint64_t reuses = 0;          // requests served from a free list
  uint64_t releases_to_os = 0;  // idle buffers given back to the OS
};

// Power-of-two size classes from 4 KiB up to a maximum, shared by every
// connection of the daemon. Buffers come from mmap, so freeing one really
// returns its memory to the OS. Idle buffers are kept for reuse until the
// `keep` they were Put with runs out (ReleaseExpired, called periodically),
// or sooner when ReleaseIdle or TrimCacheTo (also run by a Get that must
// stay within its cache_limit) frees them. Thread-safe (one mutex per size
// class).
class BufferPool {
 public:
  static constexpr size_t kMinClassSize = 4096;

  // `max_buffer` is rounded up to a power of two (>= kMinClassSize).
  explicit BufferPool(size_t max_buffer);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // The capacity a request of `size` bytes gets (its class size).
  static size_t ClassSize(size_t size);

  // A buffer of ClassSize(size) bytes, or nullptr if size is 0, larger
  // than the maximum, or the OS refuses memory. When no cached buffer fits
  // and a new one must be allocated, cached buffers are first freed until
  // at most `cache_limit` bytes stay cached (bounding total memory).
  // When `reused` is given, it tells whether a cached buffer was reused.
  uint8_t* Get(size_t size, uint64_t cache_limit = UINT64_MAX,
               bool* reused = nullptr);
  // Returns a buffer obtained from Get with that capacity; it is kept for
  // reuse until `keep` runs out (a year or more: until trimmed), unless
  // ReleaseIdle or TrimCacheTo frees it first.
  void Put(uint8_t* data, size_t capacity,
           std::chrono::steady_clock::duration keep =
               std::chrono::steady_clock::duration::max());

  // Frees every cached buffer idle for at least `idle`, or longer than the
  // `keep` it was Put with; returns the bytes freed. idle == 0 frees all
  // cached buffers.
  uint64_t ReleaseIdle(std::chrono::steady_clock::duration idle);
  // Frees cached buffers whose `keep` has run out; returns the bytes freed.
  uint64_t ReleaseExpired();
  // Frees cached buffers, largest class first and oldest first within a
  // class, until at most `limit` bytes are cached; returns the bytes freed.
  uint64_t TrimCacheTo(uint64_t limit);

  BufferPoolStats stats() const;
  size_t max_buffer() const { return max_buffer_; }

 private:
  struct Cached {
    uint8_t* data;
    std::chrono::steady_clock::time_point since;
    std::chrono::steady_clock::time_point expires;
  };
  // Frees the cached buffers of class `i` for which `pred` holds.
  template <typename Pred>
  uint64_t FreeIf(size_t i, Pred pred);
  struct SizeClass {
    Mutex mu;
    std::vector<Cached> free ABSL_GUARDED_BY(mu);  // LIFO: hottest last
  };
  static int ClassIndex(size_t capacity);

  const size_t max_buffer_;
  std::array<SizeClass, 32> classes_;
  std::atomic<uint64_t> in_use_{0};
  std::atomic<uint64_t> cached_{0};
  std::atomic<uint64_t> allocations_{0};
  std::atomic<uint64_t> reuses_{0};
  std::atomic<uint64_t> released_{0};
};

// Allocates `size` bytes straight from the OS (mmap); nullptr on failure.
uint8_t* AllocatePages(size_t size);
void FreePages(uint8_t* p, size_t size);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BUFFER_BUFFER_POOL_H_
