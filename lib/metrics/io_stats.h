#ifndef NBDMGR_LIB_METRICS_IO_STATS_H_
#define NBDMGR_LIB_METRICS_IO_STATS_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "lib/util/mutex.h"

namespace nbdmgr {

// The request kinds counted separately.
enum class IoOp : uint8_t {
  kRead,
  kWrite,
  kFlush,
  kTrim,
  kWriteZeroes,
  kCache,
  kBlockStatus,
  kOther,  // unknown commands (answered with an error)
};
inline constexpr size_t kNumIoOps = 8;
// "read", "write", "flush", "trim", "write_zeroes", "cache", "block_status",
// "other": the `op` label.
std::string_view NameOf(IoOp op);

// How a request ended: ok or the NBD error it was answered with.
enum class IoResult : uint8_t {
  kOk,
  kEperm,
  kEio,
  kEnomem,
  kEinval,
  kEnospc,
  kEoverflow,
  kEnotsup,
  kEshutdown,
  kOtherError,
};
inline constexpr size_t kNumIoResults = 10;
// "ok", "EPERM", ..., "other": the `result` label.
std::string_view NameOf(IoResult r);

// Upper bounds (seconds) of the request latency histogram buckets; a last,
// implicit bucket is +Inf.
inline constexpr std::array<double, 18> kLatencyBounds = {
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3,
    10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0,  2.5,    10.0};
inline constexpr size_t kNumLatencyBuckets = kLatencyBounds.size() + 1;

// Upper bound (seconds) of histogram bucket i; +Inf for the last one.
double LatencyBucketBound(size_t i);
// Index of the histogram bucket for a latency in nanoseconds.
size_t LatencyBucket(uint64_t ns);

// A plain copy of request counters: what snapshots are made of. Sums.
struct IoCounts {
  uint64_t requests[kNumIoOps][kNumIoResults] = {};
  // Of `requests`, those whose error a backend call returned (not a
  // request refused by validation): a failing backend rather than a client
  // sending bad requests. Never counted under kOk.
  uint64_t backend_errors[kNumIoOps][kNumIoResults] = {};
  // Per op, requests per latency bucket (not cumulative).
  uint64_t latency[kNumIoOps][kNumLatencyBuckets] = {};
  uint64_t latency_sum_ns[kNumIoOps] = {};
  uint64_t bytes_read = 0;     // payload of successful READs
  uint64_t bytes_written = 0;  // payload of successful WRITEs
  uint64_t in_flight = 0;      // read from clients, not yet answered

  IoCounts& operator+=(const IoCounts& o);
  uint64_t total_requests(IoOp op) const;
  uint64_t total_requests() const;        // all ops
  uint64_t total_latency_ns() const;      // all ops
  uint64_t errors() const;                // every request not ok, all ops
  uint64_t backend_errors_total() const;  // all of backend_errors
};

// The request counters of one connection. Written by the connection's
// thread only, read from any thread: each counter is a relaxed atomic that
// its single writer updates with a plain load and store, so counting costs
// no locked instruction and no cache line shared with other connections.
class ConnectionIoStats {
 public:
  // One answered request. `bytes` counts toward bytes read/written only for
  // successful READ and WRITE; `backend_error` (the request's error came
  // from a backend call) counts it in backend_errors too, unless `result`
  // is kOk.
  void Record(IoOp op, IoResult result, uint64_t bytes, uint64_t latency_ns,
              bool backend_error = false);
  void SetInFlight(uint64_t n) {
    in_flight_.store(n, std::memory_order_relaxed);
  }
  // Adds this connection's counts to `out` (may run concurrently with
  // Record; each counter is read once).
  void AddTo(IoCounts* out) const;

 private:
  using Counter = std::atomic<uint64_t>;
  static void Bump(Counter& c, uint64_t by) {
    c.store(c.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
  }
  Counter requests_[kNumIoOps][kNumIoResults] = {};
  Counter backend_errors_[kNumIoOps][kNumIoResults] = {};
  Counter latency_[kNumIoOps][kNumLatencyBuckets] = {};
  Counter latency_sum_ns_[kNumIoOps] = {};
  Counter bytes_read_{0};
  Counter bytes_written_{0};
  Counter in_flight_{0};
};

// An export's request counters: the totals of its past connections plus its
// live ones, merged when read. Thread-safe; the lock is taken only when a
// connection starts or ends and when a snapshot is taken, never per request.
class ExportIoStats {
 public:
  // `c` must stay alive until Detach(c).
  void Attach(const ConnectionIoStats* c);
  // Folds `c`'s counts (except in-flight) into the export's totals.
  void Detach(const ConnectionIoStats* c);
  IoCounts Snapshot() const;

 private:
  mutable Mutex mu_;
  IoCounts retired_ ABSL_GUARDED_BY(mu_);
  std::vector<const ConnectionIoStats*> live_ ABSL_GUARDED_BY(mu_);
};

// Attaches a connection's counters to its export's for a scope.
class ScopedIoStats {
 public:
  explicit ScopedIoStats(ExportIoStats* owner) : owner_(owner) {
    if (owner_ != nullptr) owner_->Attach(&stats_);
  }
  ~ScopedIoStats() {
    if (owner_ != nullptr) owner_->Detach(&stats_);
  }
  ScopedIoStats(const ScopedIoStats&) = delete;
  ScopedIoStats& operator=(const ScopedIoStats&) = delete;
  // nullptr when the owner is (counting is off).
  ConnectionIoStats* get() { return owner_ != nullptr ? &stats_ : nullptr; }

 private:
  ExportIoStats* owner_;
  ConnectionIoStats stats_;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_METRICS_IO_STATS_H_
