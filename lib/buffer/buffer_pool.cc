#include "lib/buffer/buffer_pool.h"

#include <sys/mman.h>

#include <bit>

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

BufferPool::~BufferPool() { ReleaseIdle(std::chrono::steady_clock::duration::zero()); }

size_t BufferPool::ClassSize(size_t size) {
  return std::bit_ceil(std::max(size, kMinClassSize));
}

int BufferPool::ClassIndex(size_t capacity) {
  return std::countr_zero(capacity) - std::countr_zero(kMinClassSize);
}

uint8_t* BufferPool::Get(size_t size) {
  if (size == 0 || size > max_buffer_) return nullptr;
  size_t capacity = ClassSize(size);
  SizeClass& c = classes_[ClassIndex(capacity)];
  uint8_t* p = nullptr;
  {
    std::lock_guard lock(c.mu);
    if (!c.free.empty()) {
      p = c.free.back().data;
      c.free.pop_back();
    }
  }
  if (p != nullptr) {
    cached_.fetch_sub(capacity, std::memory_order_relaxed);
    reuses_.fetch_add(1, std::memory_order_relaxed);
  } else {
    p = AllocatePages(capacity);
    if (p == nullptr) return nullptr;
    allocations_.fetch_add(1, std::memory_order_relaxed);
  }
  in_use_.fetch_add(capacity, std::memory_order_relaxed);
  return p;
}

void BufferPool::Put(uint8_t* data, size_t capacity) {
  if (data == nullptr) return;
  SizeClass& c = classes_[ClassIndex(capacity)];
  in_use_.fetch_sub(capacity, std::memory_order_relaxed);
  cached_.fetch_add(capacity, std::memory_order_relaxed);
  std::lock_guard lock(c.mu);
  c.free.push_back(Cached{data, std::chrono::steady_clock::now()});
}

uint64_t BufferPool::ReleaseIdle(std::chrono::steady_clock::duration idle) {
  auto cutoff = std::chrono::steady_clock::now() - idle;
  uint64_t freed = 0;
  for (size_t i = 0; i < classes_.size(); ++i) {
    size_t capacity = kMinClassSize << i;
    if (capacity > max_buffer_) break;
    std::vector<uint8_t*> victims;
    {
      std::lock_guard lock(classes_[i].mu);
      auto& free = classes_[i].free;
      // Oldest entries are at the front (LIFO pushes to the back).
      size_t n = 0;
      while (n < free.size() &&
             (idle == std::chrono::steady_clock::duration::zero() ||
              free[n].since <= cutoff)) {
        victims.push_back(free[n].data);
        ++n;
      }
      free.erase(free.begin(), free.begin() + static_cast<ptrdiff_t>(n));
    }
    for (uint8_t* p : victims) FreePages(p, capacity);
    freed += victims.size() * capacity;
    cached_.fetch_sub(victims.size() * capacity, std::memory_order_relaxed);
    released_.fetch_add(victims.size(), std::memory_order_relaxed);
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
