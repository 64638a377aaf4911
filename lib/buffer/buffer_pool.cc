#include "lib/buffer/buffer_pool.h"

#include <sys/mman.h>

#include <bit>

#include "lib/util/mutex.h"

namespace nbdmgr {

uint8_t* AllocatePages(size_t size) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
}

void FreePages(uint8_t* p, size_t size) {
  if (p != nullptr) ::munmap(p, size);
}

BufferPool::BufferPool(size_t max_buffer)
    : max_buffer_(ClassSize(max_buffer)) {}

BufferPool::~BufferPool() {
  ReleaseIdle(std::chrono::steady_clock::duration::zero());
}

size_t BufferPool::ClassSize(size_t size) {
  return std::bit_ceil(std::max(size, kMinClassSize));
}

int BufferPool::ClassIndex(size_t capacity) {
  return std::countr_zero(capacity) - std::countr_zero(kMinClassSize);
}

uint8_t* BufferPool::Get(size_t size, uint64_t cache_limit, bool* reused) {
  if (size == 0 || size > max_buffer_) return nullptr;
  size_t capacity = ClassSize(size);
  SizeClass& c = classes_[ClassIndex(capacity)];
  uint8_t* p = nullptr;
  {
    MutexLock lock(&c.mu);
    if (!c.free.empty()) {
      p = c.free.back().data;
      c.free.pop_back();
    }
  }
  if (reused != nullptr) *reused = p != nullptr;
  if (p != nullptr) {
    cached_.fetch_sub(capacity, std::memory_order_relaxed);
    reuses_.fetch_add(1, std::memory_order_relaxed);
  } else {
    if (cached_.load(std::memory_order_relaxed) > cache_limit) {
      TrimCacheTo(cache_limit);
    }
    p = AllocatePages(capacity);
    if (p == nullptr) return nullptr;
    allocations_.fetch_add(1, std::memory_order_relaxed);
  }
  in_use_.fetch_add(capacity, std::memory_order_relaxed);
  return p;
}

void BufferPool::Put(uint8_t* data, size_t capacity,
                     std::chrono::steady_clock::duration keep) {
  if (data == nullptr) return;
  SizeClass& c = classes_[ClassIndex(capacity)];
  in_use_.fetch_sub(capacity, std::memory_order_relaxed);
  cached_.fetch_add(capacity, std::memory_order_relaxed);
  auto now = std::chrono::steady_clock::now();
  auto expires = keep >= std::chrono::hours(24 * 365)
                     ? std::chrono::steady_clock::time_point::max()
                     : now + keep;
  MutexLock lock(&c.mu);
  c.free.push_back(Cached{data, now, expires});
}

template <typename Pred>
uint64_t BufferPool::FreeIf(size_t i, Pred pred) {
  size_t capacity = kMinClassSize << i;
  std::vector<uint8_t*> victims;
  {
    MutexLock lock(&classes_[i].mu);
    auto& free = classes_[i].free;
    std::erase_if(free, [&](const Cached& c) {
      if (!pred(c)) return false;
      victims.push_back(c.data);
      return true;
    });
  }
  for (uint8_t* p : victims) FreePages(p, capacity);
  cached_.fetch_sub(victims.size() * capacity, std::memory_order_relaxed);
  released_.fetch_add(victims.size(), std::memory_order_relaxed);
  return victims.size() * capacity;
}

uint64_t BufferPool::ReleaseExpired() {
  auto now = std::chrono::steady_clock::now();
  uint64_t freed = 0;
  for (size_t i = 0; i < classes_.size(); ++i) {
    if ((kMinClassSize << i) > max_buffer_) break;
    freed += FreeIf(i, [&](const Cached& c) { return c.expires <= now; });
  }
  return freed;
}

uint64_t BufferPool::TrimCacheTo(uint64_t limit) {
  uint64_t freed = 0;
  // Largest classes first: fewest frees for the most bytes.
  for (size_t i = classes_.size(); i-- > 0;) {
    if ((kMinClassSize << i) > max_buffer_) continue;
    if (cached_.load(std::memory_order_relaxed) <= limit) break;
    freed += FreeIf(i, [&](const Cached&) {
      return cached_.load(std::memory_order_relaxed) > limit;
    });
  }
  return freed;
}

uint64_t BufferPool::ReleaseIdle(std::chrono::steady_clock::duration idle) {
  auto now = std::chrono::steady_clock::now();
  auto cutoff = now - idle;
  const bool all = idle == std::chrono::steady_clock::duration::zero();
  uint64_t freed = 0;
  for (size_t i = 0; i < classes_.size(); ++i) {
    if ((kMinClassSize << i) > max_buffer_) break;
    freed += FreeIf(i, [&](const Cached& c) {
      return all || c.since <= cutoff || c.expires <= now;
    });
  }
  return freed;
}

BufferPoolStats BufferPool::stats() const {
  BufferPoolStats s;
  s.bytes_in_use = in_use_.load(std::memory_order_relaxed);
  s.bytes_cached = cached_.load(std::memory_order_relaxed);
  s.allocations = allocations_.load(std::memory_order_relaxed);
  s.reuses = reuses_.load(std::memory_order_relaxed);
  s.releases_to_os = released_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace nbdmgr
