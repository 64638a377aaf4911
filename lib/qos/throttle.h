#ifndef NBDMGR_LIB_QOS_THROTTLE_H_
#define NBDMGR_LIB_QOS_THROTTLE_H_

#include <array>
#include <atomic>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "lib/qos/qos_limits.h"
#include "lib/util/mutex.h"

namespace nbdmgr {

// What one request costs: one operation of `bytes` bytes, a read or a
// write (see QosLimitKind for how NBD commands count).
struct QosCost {
  bool write = false;
  uint64_t bytes = 0;
};

// Counters of one throttle (an export's own limits, or a group's).
struct ThrottleStats {
  uint64_t throttled_requests = 0;  // requests that had to wait
  uint64_t throttled_ns = 0;        // the time they waited, in total
  uint64_t waiting = 0;             // requests waiting now
};

// Requests that waited, and for how long in all; lock-free.
class WaitCounter {
 public:
  void Record(int64_t ns);
  // Fills throttled_requests and throttled_ns of `s`.
  void AddTo(ThrottleStats& s) const;

 private:
  std::atomic<uint64_t> requests_{0};
  std::atomic<uint64_t> ns_{0};
};

class Throttle;

// A request waiting in a Throttle's queue. The throttle calls Wake() when
// the waiter should Poll() again: it came to the head of the queue, it was
// admitted by another thread, or the limits changed. Wake() is called with
// the throttle's lock held, from any thread: it must only schedule the
// waiter to run (never call back into the throttle). Spurious wakes are
// allowed: Poll() tells.
class ThrottleWaiter {
 public:
  virtual void Wake() = 0;

 protected:
  ~ThrottleWaiter() = default;

 private:
  friend class Throttle;
  QosCost cost_;
  const void* flow_ = nullptr;
  uint64_t round_ = 0;
  bool queued_ = false;
  bool admitted_ = false;
  ThrottleWaiter* prev_ = nullptr;
  ThrottleWaiter* next_ = nullptr;
};

// A set of token buckets (QosLimits) and the FIFO queue of requests waiting
// for them. Each limit is a bucket that drains at its rate and holds at
// most its burst; a request is admitted once every bucket has room for its
// cost (a request bigger than a burst once the bucket is empty), and then
// fills them. So in any window of W seconds a limit admits at most
// rate * W + max(burst, the largest request) units.
//
// Waiters are admitted in rounds, round-robin across flows (a flow is what
// the caller names with Enter's `flow`: a group passes each member export's
// requests as one flow). A waiter joins the round after its flow's last
// one, or the round now being served if that is later: a flow has at most
// one waiter admitted per round. So with one flow (an export's own throttle)
// the queue is FIFO, and in a group every member with requests waiting gets one
// admission per round, however many connections it has. Callers that queue at
// most one request per connection (the NBD reader stops reading while its
// request waits) get round-robin fairness across the connections of a flow too.
// Nothing spins and no thread waits: only the head of the queue has a deadline
// (when the buckets will hold it); the rest are woken when they reach it.
//
// Times are steady-clock nanoseconds supplied by the caller (tests pass
// their own). Thread-safe.
class Throttle {
 public:
  static constexpr int64_t kAdmitted = -1;
  static constexpr int64_t kNever = INT64_MAX;

  explicit Throttle(const QosLimits& limits = {}, int64_t now_ns = 0);
  Throttle(const Throttle&) = delete;
  Throttle& operator=(const Throttle&) = delete;

  // Replaces the limits. What the buckets hold is kept (a limit that is
  // new starts empty: its burst is available), and the head of the queue
  // is woken to recompute its deadline, so waiters see the change at once.
  void SetLimits(const QosLimits& limits, int64_t now_ns);
  QosLimits limits() const;
  // Whether any limit is set (a cheap, relaxed read).
  bool limited() const { return limited_.load(std::memory_order_relaxed); }

  // Admits `cost` at `now` if nothing waits and every bucket has room:
  // kAdmitted. Otherwise queues `w` (in its flow's next round) and
  // returns when it should Poll: its deadline if it heads the queue, else
  // kNever (it is woken when it gets there). `w` must not be queued
  // already. `flow` is only compared (never dereferenced); a new flow at
  // the address of an old one may inherit its place for a round or so.
  int64_t Enter(ThrottleWaiter& w, QosCost cost, int64_t now,
                const void* flow = nullptr);
  // Admits `cost` at `now` only if Enter would at once (nothing waits,
  // every bucket has room); never queues. For requests that must fail
  // rather than wait (NBD's FAST_ZERO).
  bool TryEnter(QosCost cost, int64_t now);
  // For a queued waiter that was woken or reached its deadline: kAdmitted
  // (it has left the queue), or when to Poll next.
  int64_t Poll(ThrottleWaiter& w, int64_t now);
  // Takes `w` out of the queue (its wait was cancelled); a no-op if it was
  // admitted meanwhile. The next waiter moves up.
  void Leave(ThrottleWaiter& w, int64_t now);

  // Wakes every waiter, to look again whether this throttle still applies
  // to it (its export left the group).
  void WakeAll();

  // Whether `w` is in this throttle's queue.
  bool queued(const ThrottleWaiter& w) const;

  // Counts one request that waited `ns` (callers report their waits).
  void RecordWait(int64_t ns);
  ThrottleStats stats() const;

 private:
  // One limit. `level(t)` = max(0, empty_at - t) * per_ns units.
  struct Bucket {
    double per_ns = 0;    // units per nanosecond; 0: no limit
    double capacity = 0;  // the burst, in units
    int64_t empty_at = 0;

    double Level(int64_t now) const;
    // The earliest time (>= now) at which `cost` fits.
    int64_t ReadyAt(double cost, int64_t now) const;
    void Take(double cost, int64_t now);
  };

  int64_t ReadyAt(const QosCost& c, int64_t now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Take(const QosCost& c, int64_t now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues `w` after every waiter of its round or an earlier one.
  void Link(ThrottleWaiter& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  struct Flow;
  // Takes `w` out of the queue; returns its flow (still in flows_).
  Flow& Unlink(ThrottleWaiter& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes the head's cost, marks it admitted and unlinks it; a new round
  // forgets the flows that are done.
  void Admit(ThrottleWaiter& w, int64_t now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Admits waiters from the head while they fit, waking each; wakes the
  // first that does not, to arm its deadline.
  void AdmitReady(int64_t now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable Mutex mu_;
  QosLimits limits_ ABSL_GUARDED_BY(mu_);
  std::array<Bucket, kQosLimitKinds> buckets_ ABSL_GUARDED_BY(mu_);
  ThrottleWaiter* head_ ABSL_GUARDED_BY(mu_) = nullptr;
  ThrottleWaiter* tail_ ABSL_GUARDED_BY(mu_) = nullptr;
  uint64_t waiting_ ABSL_GUARDED_BY(mu_) = 0;
  // The flows with waiters queued or a turn in a round not over yet: the
  // round of the last one queued (or given back, see Leave), of the last
  // one admitted, and how many are queued now.
  struct Flow {
    uint64_t last_round = 0;
    uint64_t admitted_round = 0;
    uint64_t queued = 0;
  };
  absl::flat_hash_map<const void*, Flow> flows_ ABSL_GUARDED_BY(mu_);
  // The round of the last waiter admitted: where a flow's first waiter
  // goes when none waits. From 1: a flow's rounds 0 mean "none yet".
  uint64_t round_ ABSL_GUARDED_BY(mu_) = 1;
  std::atomic<bool> limited_{false};
  WaitCounter waits_;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_QOS_THROTTLE_H_
