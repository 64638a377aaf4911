#include "lib/buffer/buffer_policy.h"

#include <algorithm>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "lib/util/mutex.h"
#include "lib/util/strings.h"

namespace nbdmgr {
namespace {

// Exact-strategy buffers: page-backed above this size so freeing really
// returns memory to the OS; malloc below it.
constexpr size_t kExactMmapThreshold = 64 * 1024;

size_t RoundUpPage(size_t n) { return (n + 4095) & ~size_t{4095}; }

}  // namespace

std::string_view NameOf(BufferStrategy s) {
  switch (s) {
    case BufferStrategy::kFixed:
      return "fixed";
    case BufferStrategy::kGrow:
      return "grow";
    case BufferStrategy::kExact:
      return "exact";
    case BufferStrategy::kPool:
      return "pool";
    case BufferStrategy::kStream:
      return "stream";
  }
  return "unknown";
}

absl::StatusOr<BufferStrategy> ParseBufferStrategy(std::string_view name) {
  for (BufferStrategy s :
       {BufferStrategy::kFixed, BufferStrategy::kGrow, BufferStrategy::kExact,
        BufferStrategy::kPool, BufferStrategy::kStream}) {
    if (NameOf(s) == name) return s;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown buffer strategy \"", ToAbsl(name),
                   "\" (fixed, grow, exact, pool, stream)"));
}

BufferSystem::BufferSystem(size_t max_payload, uint64_t memory_cap,
                           uint32_t connection_share_percent,
                           uint64_t connection_memory)
    : max_payload_(max_payload),
      share_percent_(std::clamp<uint32_t>(connection_share_percent, 1, 100)),
      connection_memory_(connection_memory),
      pool_(max_payload),
      budget_(memory_cap) {}

void BufferSystem::set_memory_cap(uint64_t cap) {
  budget_.set_cap(cap);
  if (cap != 0) {
    uint64_t used = budget_.used();
    pool_.TrimCacheTo(cap > used ? cap - used : 0);
  }
}

void BufferSystem::ReleaseIdle() { pool_.ReleaseExpired(); }

ExportBuffers::ExportBuffers(BufferSystem& system, BufferSettings settings)
    : system_(system),
      settings_(std::make_shared<const BufferSettings>(settings)),
      budget_(settings.memory_cap_bytes) {}

ExportBuffers::~ExportBuffers() = default;

std::unique_ptr<ConnectionBuffers> ExportBuffers::NewConnection() {
  auto c = std::make_unique<ConnectionBuffers>(*this);
  MutexLock lock(&conns_mu_);
  conns_.push_back(c.get());
  return c;
}

void ExportBuffers::Retire(const ConnectionBuffers* c) {
  MutexLock lock(&conns_mu_);
  retired_allocations_ += ConnectionBuffers::Get(c->allocations_);
  retired_reuses_ += ConnectionBuffers::Get(c->reuses_);
  retired_streamed_ += ConnectionBuffers::Get(c->streamed_);
  retired_cap_full_ += ConnectionBuffers::Get(c->cap_full_);
  conns_.erase(std::remove(conns_.begin(), conns_.end(), c), conns_.end());
}

void ExportBuffers::Update(const BufferSettings& settings) {
  settings_.store(std::make_shared<const BufferSettings>(settings),
                  std::memory_order_release);
  budget_.set_cap(settings.memory_cap_bytes);
}

ExportBufferStats ExportBuffers::stats() const {
  ExportBufferStats s;
  {
    MutexLock lock(&conns_mu_);
    s.allocations = retired_allocations_;
    s.reuses = retired_reuses_;
    s.streamed = retired_streamed_;
    s.cap_full = retired_cap_full_;
    for (const ConnectionBuffers* c : conns_) {
      s.cached += ConnectionBuffers::Get(c->idle_bytes_);
      s.allocations += ConnectionBuffers::Get(c->allocations_);
      s.reuses += ConnectionBuffers::Get(c->reuses_);
      s.streamed += ConnectionBuffers::Get(c->streamed_);
      s.cap_full += ConnectionBuffers::Get(c->cap_full_);
    }
  }
  const uint64_t used = budget_.used();
  s.in_use = used - std::min(used, s.cached);
  return s;
}

void ExportBuffers::Uncharge(uint64_t n) {
  if (n == 0) return;
  system_.budget().Release(n);
  budget_.Release(n);
}

ConnectionBuffers::ConnectionBuffers(ExportBuffers& owner) : owner_(owner) {}

ConnectionBuffers::~ConnectionBuffers() {
  for (const Held& h : idle_) FreeHeld(h);
  owner_.Retire(this);
}

bool ConnectionBuffers::TryCharge(uint64_t n) {
  BufferSystem& sys = owner_.system_;
  const uint64_t mine = Get(charged_);
  // Fairness: this connection's share of each cap, and its own limit.
  if (mine + n > sys.ShareOf(owner_.budget_.cap()) ||
      mine + n > sys.ShareOf(sys.budget().cap()) ||
      (sys.connection_memory() != 0 && mine + n > sys.connection_memory())) {
    return false;
  }
  if (!owner_.budget_.TryCharge(n)) return false;
  if (!sys.budget().TryCharge(n)) {
    owner_.budget_.Release(n);
    return false;
  }
  charged_.fetch_add(n, std::memory_order_relaxed);
  return true;
}

void ConnectionBuffers::Uncharge(uint64_t n) {
  if (n == 0) return;
  charged_.fetch_sub(n, std::memory_order_relaxed);
  owner_.Uncharge(n);
}

void ConnectionBuffers::FreeHeld(const Held& h) {
  FreePages(h.data, h.capacity);
  Add(idle_bytes_, -static_cast<int64_t>(h.capacity));
  Uncharge(h.capacity);
}

BufferLease ConnectionBuffers::Refuse(bool cap_full, bool count) {
  if (!count) return BufferLease();
  Add(streamed_, 1);
  if (cap_full) Add(cap_full_, 1);
  return BufferLease();
}

BufferLease ConnectionBuffers::AcquireChunk() {
  BufferPool& pool = owner_.system_.pool();
  if (TryCharge(kStreamChunk)) {
    if (uint8_t* p = pool.Get(kStreamChunk)) {
      return BufferLease(&pool_rel_, p, kStreamChunk, kStreamChunk,
                         kStreamChunk);
    }
    Uncharge(kStreamChunk);
  }
  // The reserve: not charged, so the streaming path always makes progress.
  uint8_t* p = pool.Get(kReserveChunk);
  if (p == nullptr) return BufferLease();
  owner_.system_.reserve_in_use_.fetch_add(kReserveChunk,
                                           std::memory_order_relaxed);
  return BufferLease(&reserve_rel_, p, kReserveChunk, kReserveChunk, 0);
}

BufferLease ConnectionBuffers::TryChargePinned(size_t n) {
  if (!TryCharge(n)) return BufferLease();
  return BufferLease(&charge_rel_, nullptr, 0, 0, n);
}

BufferLease ConnectionBuffers::TryAcquire(size_t size, bool count) {
  const std::shared_ptr<const BufferSettings> settings = owner_.current();
  const BufferStrategy strategy = settings->strategy;
  // A strategy change frees what the old one kept.
  if (strategy != idle_strategy_) {
    for (const Held& h : idle_) FreeHeld(h);
    idle_.clear();
    idle_strategy_ = strategy;
  }
  switch (strategy) {
    case BufferStrategy::kStream:
      return Refuse(false, count);
    case BufferStrategy::kExact:
      return AcquireExact(size, count);
    case BufferStrategy::kFixed:
    case BufferStrategy::kGrow:
      return AcquireHeld(size, strategy == BufferStrategy::kFixed, count);
    case BufferStrategy::kPool:
      return AcquirePool(size, count);
  }
  return Refuse(false, count);
}

BufferLease ConnectionBuffers::AcquireExact(size_t size, bool count) {
  if (!TryCharge(size)) return Refuse(true, count);
  uint8_t* p = size >= kExactMmapThreshold
                   ? AllocatePages(size)
                   : static_cast<uint8_t*>(std::malloc(size));
  if (p == nullptr) {
    Uncharge(size);
    return Refuse(false, count);
  }
  Add(allocations_, 1);
  return BufferLease(&heap_rel_, p, size, size, size);
}

BufferLease ConnectionBuffers::AcquireHeld(size_t size, bool fixed,
                                           bool count) {
  // Reuse a held buffer that is large enough.
  for (size_t i = 0; i < idle_.size(); ++i) {
    if (idle_[i].capacity >= size) {
      Held h = idle_[i];
      idle_.erase(idle_.begin() + static_cast<ptrdiff_t>(i));
      Add(idle_bytes_, -static_cast<int64_t>(h.capacity));
      Add(reuses_, 1);
      return BufferLease(&held_rel_, h.data, size, h.capacity, h.capacity);
    }
  }
  // grow: replace the largest held buffer with a bigger one.
  if (!fixed && !idle_.empty()) {
    FreeHeld(idle_.back());
    idle_.pop_back();
  }
  size_t capacity = fixed ? owner_.system_.max_payload() : RoundUpPage(size);
  if (!TryCharge(capacity)) return Refuse(true, count);
  uint8_t* p = AllocatePages(capacity);
  if (p == nullptr) {
    Uncharge(capacity);
    return Refuse(false, count);
  }
  Add(allocations_, 1);
  return BufferLease(&held_rel_, p, size, capacity, capacity);
}

BufferLease ConnectionBuffers::AcquirePool(size_t size, bool count) {
  size_t capacity = BufferPool::ClassSize(size);
  if (!TryCharge(capacity)) return Refuse(true, count);
  // Keep cached + in-use pool memory within the daemon cap.
  MemoryBudget& daemon = owner_.system_.budget();
  uint64_t limit = daemon.headroom();  // UINT64_MAX without a cap
  bool reused = false;
  uint8_t* p = owner_.system_.pool().Get(size, limit, &reused);
  if (p == nullptr) {
    Uncharge(capacity);
    return Refuse(false, count);
  }
  Add(reused ? reuses_ : allocations_, 1);
  return BufferLease(&pool_rel_, p, size, capacity, capacity);
}

void ConnectionBuffers::ReleaseLease(Kind kind, uint8_t* data, size_t capacity,
                                     size_t charged) {
  switch (kind) {
    case Kind::kPool:
      owner_.system_.pool().Put(data, capacity,
                                owner_.current()->pool_idle_release);
      Uncharge(charged);
      return;
    case Kind::kHeap:
      if (capacity >= kExactMmapThreshold) {
        FreePages(data, capacity);
      } else {
        std::free(data);
      }
      Uncharge(charged);
      return;
    case Kind::kReserve:
      owner_.system_.pool().Put(data, capacity,
                                owner_.current()->pool_idle_release);
      owner_.system_.reserve_in_use_.fetch_sub(capacity,
                                               std::memory_order_relaxed);
      return;
    case Kind::kChargeOnly:
      Uncharge(charged);
      return;
    case Kind::kHeld: {
      BufferStrategy now = owner_.current()->strategy;
      if (now != idle_strategy_ ||
          (now != BufferStrategy::kFixed && now != BufferStrategy::kGrow)) {
        // The strategy changed while this buffer was in flight: drop it.
        FreePages(data, capacity);
        Uncharge(capacity);
        return;
      }
      idle_.push_back(Held{data, capacity});
      Add(idle_bytes_, static_cast<int64_t>(capacity));
      return;
    }
  }
}

}  // namespace nbdmgr
