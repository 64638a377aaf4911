#ifndef NBDMGR_LIB_BUFFER_BUFFER_POLICY_H_
#define NBDMGR_LIB_BUFFER_BUFFER_POLICY_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "lib/buffer/buffer_pool.h"
#include "lib/buffer/buffer_source.h"
#include "lib/buffer/memory_budget.h"
#include "lib/util/mutex.h"

namespace nbdmgr {

// How an export gets request buffers.
enum class BufferStrategy {
  kFixed,   // one max-payload buffer per request slot of a connection, held
            // for the connection's life (go-nbd); the baseline
  kGrow,    // per connection, grown to the largest request, never shrunk
            // (nbdkit)
  kExact,   // exactly the request length, freed after the reply
  kPool,    // shared power-of-two size classes, idle buffers freed (default)
  kStream,  // no request-sized buffer: data moves in small chunks
};
std::string_view NameOf(BufferStrategy s);
// InvalidArgument listing the valid names.
absl::StatusOr<BufferStrategy> ParseBufferStrategy(std::string_view name);

struct BufferSettings {
  BufferStrategy strategy = BufferStrategy::kPool;
  uint64_t memory_cap_bytes = 0;  // 0: no per-export cap
  std::chrono::milliseconds pool_idle_release{std::chrono::seconds(5)};
};

// Chunk size of the streaming path when the caps grant it.
inline constexpr size_t kStreamChunk = 256 * 1024;
// Chunk size of a connection's reserve: the streaming path's chunk when the
// caps are full. Not charged to any cap (it is what lets every connection
// make progress at a full cap) but counted daemon-wide; a connection uses
// at most two at once (one streaming a WRITE in, one a READ out).
inline constexpr size_t kReserveChunk = 64 * 1024;
// The default share of a cap one connection may hold.
inline constexpr uint32_t kDefaultConnectionSharePercent = 25;
// The default of the most one connection may hold charged at once, cap or
// not: what a client that stops moving can hold until it is dropped. Room
// for nbdcopy's 64 x 256 KiB and fio's or qemu's 8-16 x 1 MiB in flight.
inline constexpr uint64_t kDefaultConnectionMemory = 16 * 1024 * 1024;

// Daemon-wide buffer state: the shared pool and the daemon cap. Thread-safe.
class BufferSystem {
 public:
  // `connection_share_percent` (1-100): the most one connection may hold
  // of the daemon cap and of its export's cap; `connection_memory` (0: no
  // limit): the most one connection may hold at all.
  explicit BufferSystem(
      size_t max_payload, uint64_t memory_cap = 0,
      uint32_t connection_share_percent = kDefaultConnectionSharePercent,
      uint64_t connection_memory = 0);

  BufferPool& pool() { return pool_; }
  MemoryBudget& budget() { return budget_; }
  size_t max_payload() const { return max_payload_; }

  // Changes the daemon-wide cap (0: none). Lowering it below what is in use
  // takes effect as buffers come back; idle pool memory above the new cap is
  // freed now.
  void set_memory_cap(uint64_t cap);
  // Frees pool buffers whose idle time has run out. Call periodically.
  void ReleaseIdle();

  uint64_t connection_memory() const { return connection_memory_; }
  // The most one connection may hold under `cap` (0: no cap, no limit).
  uint64_t ShareOf(uint64_t cap) const {
    if (cap == 0) return UINT64_MAX;
    return static_cast<uint64_t>(static_cast<unsigned __int128>(cap) *
                                 share_percent_ / 100);
  }
  // Bytes of connection reserves in use now (not charged to any cap).
  uint64_t reserve_in_use() const {
    return reserve_in_use_.load(std::memory_order_relaxed);
  }

 private:
  friend class ConnectionBuffers;
  const size_t max_payload_;
  const uint32_t share_percent_;
  const uint64_t connection_memory_;
  BufferPool pool_;
  MemoryBudget budget_;
  std::atomic<uint64_t> reserve_in_use_{0};
};

// Counters of one export's buffers (all bytes).
struct ExportBufferStats {
  uint64_t in_use = 0;       // charged to the export now
  uint64_t cached = 0;       // held idle by connections (fixed, grow)
  uint64_t allocations = 0;  // buffers obtained from the OS
  uint64_t reuses = 0;       // requests served by an existing buffer
  uint64_t cap_full = 0;     // requests refused a buffer by a full cap,
                             // their connection's share or its memory
                             // limit (then streamed)
  uint64_t streamed = 0;     // requests served through the streaming path
};

class ConnectionBuffers;

// One export's buffer settings, budget and counters. Settings can change
// while clients are connected: new requests use the new ones, requests in
// flight finish with theirs. Thread-safe. `system` must outlive it.
class ExportBuffers {
 public:
  ExportBuffers(BufferSystem& system, BufferSettings settings);
  ~ExportBuffers();

  // A buffer source for one connection of this export.
  std::unique_ptr<ConnectionBuffers> NewConnection();

  void Update(const BufferSettings& settings);
  BufferSettings settings() const { return *current(); }
  // The current settings without copying them (lock-free).
  std::shared_ptr<const BufferSettings> current() const {
    return settings_.load(std::memory_order_acquire);
  }
  ExportBufferStats stats() const;

 private:
  friend class ConnectionBuffers;

  void Uncharge(uint64_t n);

  BufferSystem& system_;
  std::atomic<std::shared_ptr<const BufferSettings>> settings_;
  MemoryBudget budget_;
  // Counters of connections that ended; live ones are summed on read.
  void Retire(const ConnectionBuffers* c);
  mutable Mutex conns_mu_;
  std::vector<const ConnectionBuffers*> conns_ ABSL_GUARDED_BY(conns_mu_);
  uint64_t retired_allocations_ ABSL_GUARDED_BY(conns_mu_) = 0;
  uint64_t retired_reuses_ ABSL_GUARDED_BY(conns_mu_) = 0;
  uint64_t retired_streamed_ ABSL_GUARDED_BY(conns_mu_) = 0;
  uint64_t retired_cap_full_ ABSL_GUARDED_BY(conns_mu_) = 0;
};

// Request buffers for one connection, by the export's current strategy.
// Every charge is tried, never waited for, against the export cap, the
// daemon cap, this connection's share of each (fairness: a few connections
// cannot take a whole cap) and the daemon's per-connection memory limit.
// Used on the connection's executor only, leases released included; its
// leases must be released before it is destroyed.
class ConnectionBuffers final : public RequestBufferSource {
 public:
  explicit ConnectionBuffers(ExportBuffers& owner);
  ~ConnectionBuffers() override;

  BufferLease TryAcquire(size_t size, bool count = true) override;
  BufferLease TryChargePinned(size_t n) override;
  BufferLease AcquireChunk() override;

  // Bytes this connection holds charged to the caps now (leases, pinned
  // replies, idle fixed/grow buffers).
  uint64_t charged() const { return Get(charged_); }

 private:
  struct Held {
    uint8_t* data;
    size_t capacity;
  };
  // What a lease's memory is, so its release knows where it goes.
  enum class Kind { kPool, kHeap, kHeld, kReserve, kChargeOnly };
  class Releaser final : public BufferReleaser {
   public:
    Releaser(ConnectionBuffers& c, Kind k) : c_(c), kind_(k) {}
    void Release(uint8_t* data, size_t capacity, size_t charged) override {
      c_.ReleaseLease(kind_, data, capacity, charged);
    }

   private:
    ConnectionBuffers& c_;
    const Kind kind_;
  };
  void ReleaseLease(Kind kind, uint8_t* data, size_t capacity, size_t charged);
  // Charges `n` to this connection, the export cap and the daemon cap, all
  // or nothing; false if any of them (or the share) is full.
  bool TryCharge(uint64_t n);
  void Uncharge(uint64_t n);
  void FreeHeld(const Held& h);
  BufferLease Refuse(bool cap_full, bool count);
  // TryAcquire by strategy: a buffer of exactly `size` (exact), a held
  // buffer of at least `size` reused or made (fixed: max payload; grow:
  // `size` rounded to pages), or a pool size class (pool).
  BufferLease AcquireExact(size_t size, bool count);
  BufferLease AcquireHeld(size_t size, bool fixed, bool count);
  BufferLease AcquirePool(size_t size, bool count);

  friend class ExportBuffers;
  // This connection's counters: written on its executor only, read by
  // ExportBuffers::stats() from any thread (single-writer relaxed atomics,
  // so counting costs plain stores and shares no cache line).
  using Counter = std::atomic<uint64_t>;
  static void Add(Counter& c, int64_t by) {
    c.store(c.load(std::memory_order_relaxed) + static_cast<uint64_t>(by),
            std::memory_order_relaxed);
  }
  static uint64_t Get(const Counter& c) {
    return c.load(std::memory_order_relaxed);
  }

  ExportBuffers& owner_;
  std::vector<Held> idle_;  // fixed/grow buffers not in use
  BufferStrategy idle_strategy_ = BufferStrategy::kPool;
  Counter idle_bytes_{0};  // capacity of idle_
  Counter allocations_{0};
  Counter reuses_{0};
  Counter streamed_{0};
  Counter cap_full_{0};
  Counter charged_{0};
  Releaser pool_rel_{*this, Kind::kPool};
  Releaser heap_rel_{*this, Kind::kHeap};
  Releaser held_rel_{*this, Kind::kHeld};
  Releaser reserve_rel_{*this, Kind::kReserve};
  Releaser charge_rel_{*this, Kind::kChargeOnly};
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BUFFER_BUFFER_POLICY_H_
