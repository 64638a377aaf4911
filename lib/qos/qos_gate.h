#ifndef NBDMGR_LIB_QOS_QOS_GATE_H_
#define NBDMGR_LIB_QOS_QOS_GATE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "lib/qos/qos_limits.h"
#include "lib/qos/throttle.h"
#include "lib/util/mutex.h"

namespace nbdmgr {

// A named limit shared by several exports (as qemu's throttle groups): the
// requests of all its members together stay within its limits, and members
// with requests waiting are admitted in turn (each export is one flow of
// the group's throttle), however many connections each has. Thread-safe.
class QosGroup {
 public:
  QosGroup(std::string name, const QosLimits& limits);
  const std::string& name() const { return name_; }
  Throttle& throttle() { return throttle_; }
  const Throttle& throttle() const { return throttle_; }
  QosLimits limits() const { return throttle_.limits(); }
  void SetLimits(const QosLimits& limits);
  // Exports served in the group now (QosGate::SetGroup counts them).
  int members() const { return members_.load(std::memory_order_relaxed); }

 private:
  friend class QosGate;
  const std::string name_;
  Throttle throttle_;
  std::atomic<int> members_{0};
};

// An export's quality of service: its own limits and, optionally, the group
// it belongs to. A request passes the export's own throttle, then its
// group's. engaged() is the one check an unlimited export pays per request.
// Thread-safe.
class QosGate {
 public:
  explicit QosGate(const QosLimits& limits = {});
  ~QosGate();
  QosGate(const QosGate&) = delete;
  QosGate& operator=(const QosGate&) = delete;

  // Whether requests must pass a throttle: limits or a group are set.
  bool engaged() const { return engaged_.load(std::memory_order_relaxed); }

  Throttle& own() { return own_; }
  QosLimits limits() const { return own_.limits(); }
  void SetLimits(const QosLimits& limits);
  // The group (null: none). Requests waiting in the old group are woken
  // (and no longer wait for it, see QosWaiter::Pass).
  std::shared_ptr<QosGroup> group() const;
  void SetGroup(std::shared_ptr<QosGroup> group);

  // Counts one request of this export that waited `ns` in all (its own
  // limits and its group's).
  void RecordWait(int64_t ns);
  // throttled_*: every wait of the export's requests, own and group;
  // waiting: requests waiting in its own throttle now.
  ThrottleStats stats() const;

 private:
  void UpdateEngaged() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Throttle own_;
  std::atomic<bool> engaged_{false};
  mutable Mutex mu_;
  std::shared_ptr<QosGroup> group_ ABSL_GUARDED_BY(mu_);
  WaitCounter waits_;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_QOS_QOS_GATE_H_
