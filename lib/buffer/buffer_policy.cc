#include "lib/buffer/buffer_policy.h"

#include <algorithm>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "lib/util/strings.h"

namespace nbdmgr {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

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

BufferSystem::BufferSystem(size_t max_payload, uint64_t memory_cap)
    : max_payload_(max_payload), pool_(max_payload), budget_(memory_cap) {}

void BufferSystem::set_memory_cap(uint64_t cap) {
  budget_.set_cap(cap);
  if (cap != 0) {
    uint64_t used = budget_.stats().used;
    pool_.TrimCacheTo(cap > used ? cap - used : 0);
  }
}

void BufferSystem::ReleaseIdle() { pool_.ReleaseExpired(); }

// Frees exact-strategy buffers and returns their charge.
class ExportBuffers::HeapReleaser final : public BufferReleaser {
 public:
  explicit HeapReleaser(ExportBuffers& owner) : owner_(owner) {}
  void Release(uint8_t* data, size_t capacity, size_t charged) override {
    if (capacity >= kExactMmapThreshold) {
      FreePages(data, capacity);
    } else {
      std::free(data);
    }
    owner_.Uncharge(charged);
  }

 private:
  ExportBuffers& owner_;
};

// Returns pool buffers to the shared pool and their charge.
class ExportBuffers::PoolReleaser final : public BufferReleaser {
 public:
  explicit PoolReleaser(ExportBuffers& owner) : owner_(owner) {}
  void Release(uint8_t* data, size_t capacity, size_t charged) override {
    owner_.system_.pool().Put(data, capacity,
                              owner_.current()->pool_idle_release);
    owner_.Uncharge(charged);
  }

 private:
  ExportBuffers& owner_;
};

ExportBuffers::ExportBuffers(BufferSystem& system, BufferSettings settings)
    : system_(system),
      settings_(std::make_shared<const BufferSettings>(settings)),
      budget_(settings.memory_cap_bytes),
      heap_(std::make_unique<HeapReleaser>(*this)),
      pool_(std::make_unique<PoolReleaser>(*this)) {}

ExportBuffers::~ExportBuffers() = default;

std::unique_ptr<ConnectionBuffers> ExportBuffers::NewConnection() {
  auto c = std::make_unique<ConnectionBuffers>(*this);
  std::lock_guard lock(conns_mu_);
  conns_.push_back(c.get());
  return c;
}

void ExportBuffers::Retire(const ConnectionBuffers* c) {
  std::lock_guard lock(conns_mu_);
  retired_allocations_ += ConnectionBuffers::Get(c->allocations_);
  retired_reuses_ += ConnectionBuffers::Get(c->reuses_);
  retired_streamed_ += ConnectionBuffers::Get(c->streamed_);
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
    std::lock_guard lock(conns_mu_);
    s.allocations = retired_allocations_;
    s.reuses = retired_reuses_;
    s.streamed = retired_streamed_;
    for (const ConnectionBuffers* c : conns_) {
      s.cached += ConnectionBuffers::Get(c->idle_bytes_);
      s.allocations += ConnectionBuffers::Get(c->allocations_);
      s.reuses += ConnectionBuffers::Get(c->reuses_);
      s.streamed += ConnectionBuffers::Get(c->streamed_);
    }
  }
  MemoryBudgetStats b = budget_.stats();
  s.in_use = b.used - std::min(b.used, s.cached);
  s.cap_waits = b.waits + daemon_waits_.load(std::memory_order_relaxed);
  s.wait_ns = b.wait_ns + daemon_wait_ns_.load(std::memory_order_relaxed);
  return s;
}

bool ExportBuffers::Fits(uint64_t n) const {
  return budget_.Fits(n) && system_.budget().Fits(n);
}

asio::awaitable<void> ExportBuffers::Charge(uint64_t n) {
  co_await budget_.Charge(n);
  if (!system_.budget().TryCharge(n)) {
    auto start = Clock::now();
    co_await system_.budget().Charge(n);
    daemon_waits_.fetch_add(1, std::memory_order_relaxed);
    daemon_wait_ns_.fetch_add(
        static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() -
                                                                 start)
                .count()),
        std::memory_order_relaxed);
  }
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

void ConnectionBuffers::FreeHeld(const Held& h) {
  FreePages(h.data, h.capacity);
  Add(idle_bytes_, -static_cast<int64_t>(h.capacity));
  owner_.Uncharge(h.capacity);
}

bool ConnectionBuffers::ShouldStream(size_t size) {
  // Hold the settings for the whole call: Update() may replace them.
  const std::shared_ptr<const BufferSettings> settings = owner_.current();
  const BufferSettings& s = *settings;
  size_t charge = size;
  switch (s.strategy) {
    case BufferStrategy::kStream:
      Add(streamed_, 1);
      return true;
    case BufferStrategy::kFixed:
      charge = owner_.system_.max_payload();
      break;
    case BufferStrategy::kGrow:
      charge = RoundUpPage(size);
      break;
    case BufferStrategy::kExact:
      charge = size;
      break;
    case BufferStrategy::kPool:
      charge = BufferPool::ClassSize(size);
      break;
  }
  bool stream = !owner_.Fits(charge);
  if (stream) Add(streamed_, 1);
  return stream;
}

BufferLease ConnectionBuffers::AcquireChunk() {
  uint8_t* p = owner_.system_.pool().Get(kStreamChunk);
  // Not charged: the streaming path must always be able to make progress.
  return BufferLease(owner_.pool_.get(), p, p ? kStreamChunk : 0, kStreamChunk,
                     0);
}

asio::awaitable<BufferLease> ConnectionBuffers::Acquire(size_t size) {
  const BufferSettings s = *owner_.current();
  // A strategy change frees what the old one kept.
  if (s.strategy != idle_strategy_) {
    for (const Held& h : idle_) FreeHeld(h);
    idle_.clear();
    idle_strategy_ = s.strategy;
  }
  switch (s.strategy) {
    case BufferStrategy::kExact: {
      co_await owner_.Charge(size);
      uint8_t* p = size >= kExactMmapThreshold
                       ? AllocatePages(size)
                       : static_cast<uint8_t*>(std::malloc(size));
      if (p == nullptr) {
        owner_.Uncharge(size);
        co_return BufferLease();
      }
      Add(allocations_, 1);
      co_return BufferLease(owner_.heap_.get(), p, size, size, size);
    }
    case BufferStrategy::kFixed:
    case BufferStrategy::kGrow: {
      const bool fixed = s.strategy == BufferStrategy::kFixed;
      // Reuse a held buffer that is large enough.
      for (size_t i = 0; i < idle_.size(); ++i) {
        if (idle_[i].capacity >= size) {
          Held h = idle_[i];
          idle_.erase(idle_.begin() + static_cast<ptrdiff_t>(i));
          Add(idle_bytes_, -static_cast<int64_t>(h.capacity));
          Add(reuses_, 1);
          co_return BufferLease(this, h.data, size, h.capacity, h.capacity);
        }
      }
      // grow: replace the largest held buffer with a bigger one.
      if (!fixed && !idle_.empty()) {
        FreeHeld(idle_.back());
        idle_.pop_back();
      }
      size_t capacity =
          fixed ? owner_.system_.max_payload() : RoundUpPage(size);
      // Held buffers never come back while the connection lives, so waiting
      // for a cap could wait forever: if it does not fit now, the caller
      // streams this request instead.
      if (!owner_.budget_.TryCharge(capacity)) {
        Add(streamed_, 1);
        co_return BufferLease();
      }
      if (!owner_.system_.budget().TryCharge(capacity)) {
        owner_.budget_.Release(capacity);
        Add(streamed_, 1);
        co_return BufferLease();
      }
      uint8_t* p = AllocatePages(capacity);
      if (p == nullptr) {
        owner_.Uncharge(capacity);
        co_return BufferLease();
      }
      Add(allocations_, 1);
      co_return BufferLease(this, p, size, capacity, capacity);
    }
    case BufferStrategy::kPool:
    case BufferStrategy::kStream: {
      size_t capacity = BufferPool::ClassSize(size);
      co_await owner_.Charge(capacity);
      // Keep cached + in-use pool memory within the daemon cap.
      uint64_t limit = owner_.system_.budget().cap() == 0
                           ? UINT64_MAX
                           : owner_.system_.budget().headroom();
      bool reused = false;
      uint8_t* p = owner_.system_.pool().Get(size, limit, &reused);
      if (p == nullptr) {
        owner_.Uncharge(capacity);
        co_return BufferLease();
      }
      if (reused) {
        Add(reuses_, 1);
      } else {
        Add(allocations_, 1);
      }
      co_return BufferLease(owner_.pool_.get(), p, size, capacity, capacity);
    }
  }
  co_return BufferLease();
}

void ConnectionBuffers::Release(uint8_t* data, size_t capacity,
                                size_t charged) {
  (void)charged;  // == capacity for held buffers
  BufferStrategy now = owner_.current()->strategy;
  if (now != idle_strategy_ ||
      (now != BufferStrategy::kFixed && now != BufferStrategy::kGrow)) {
    // The strategy changed while this buffer was in flight: drop it.
    FreePages(data, capacity);
    owner_.Uncharge(capacity);
    return;
  }
  idle_.push_back(Held{data, capacity});
  Add(idle_bytes_, static_cast<int64_t>(capacity));
}

}  // namespace nbdmgr
