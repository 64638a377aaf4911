#include "lib/qos/qos_gate.h"

#include <utility>

#include "lib/util/clock.h"

namespace nbdmgr {
QosGroup::QosGroup(std::string name, const QosLimits& limits)
    : name_(std::move(name)), throttle_(limits, SteadyNowNs()) {}

void QosGroup::SetLimits(const QosLimits& limits) {
  throttle_.SetLimits(limits, SteadyNowNs());
}

QosGate::QosGate(const QosLimits& limits) : own_(limits, SteadyNowNs()) {
  MutexLock lock(&mu_);
  UpdateEngaged();
}

QosGate::~QosGate() { SetGroup(nullptr); }

void QosGate::SetLimits(const QosLimits& limits) {
  own_.SetLimits(limits, SteadyNowNs());
  MutexLock lock(&mu_);
  UpdateEngaged();
}

std::shared_ptr<QosGroup> QosGate::group() const {
  MutexLock lock(&mu_);
  return group_;
}

void QosGate::SetGroup(std::shared_ptr<QosGroup> group) {
  std::shared_ptr<QosGroup> old;
  {
    MutexLock lock(&mu_);
    if (group_ == group) return;
    old = std::move(group_);
    group_ = std::move(group);
    if (old != nullptr) old->members_.fetch_sub(1, std::memory_order_relaxed);
    if (group_ != nullptr) {
      group_->members_.fetch_add(1, std::memory_order_relaxed);
    }
    UpdateEngaged();
  }
  // Requests of this export waiting in the old group look again: it no
  // longer applies to them (QosWaiter::Pass).
  if (old != nullptr) old->throttle_.WakeAll();
}

void QosGate::UpdateEngaged() {
  engaged_.store(own_.limited() || group_ != nullptr,
                 std::memory_order_relaxed);
}

void QosGate::RecordWait(int64_t ns) { waits_.Record(ns); }

ThrottleStats QosGate::stats() const {
  ThrottleStats s;
  waits_.AddTo(s);
  s.waiting = own_.stats().waiting;
  return s;
}

}  // namespace nbdmgr
