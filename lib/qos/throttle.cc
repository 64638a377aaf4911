#include "lib/qos/throttle.h"

#include <algorithm>
#include <cmath>

namespace nbdmgr {
namespace {

// The longest a bucket may be ahead of now (about three years): keeps a
// huge request at a tiny rate from overflowing the clock.
constexpr double kMaxAheadNs = 1e17;

double CostIn(QosLimitKind k, const QosCost& c) {
  switch (k) {
    case QosLimitKind::kIopsTotal:
      return 1;
    case QosLimitKind::kIopsRead:
      return c.write ? 0 : 1;
    case QosLimitKind::kIopsWrite:
      return c.write ? 1 : 0;
    case QosLimitKind::kBpsTotal:
      return static_cast<double>(c.bytes);
    case QosLimitKind::kBpsRead:
      return c.write ? 0 : static_cast<double>(c.bytes);
    case QosLimitKind::kBpsWrite:
      return c.write ? static_cast<double>(c.bytes) : 0;
  }
  return 0;
}

}  // namespace

double Throttle::Bucket::Level(int64_t now) const {
  return empty_at > now ? static_cast<double>(empty_at - now) * per_ns : 0;
}

int64_t Throttle::Bucket::ReadyAt(double cost, int64_t now) const {
  if (per_ns == 0 || cost == 0 || empty_at <= now) return now;
  // Room for `cost` once level(t) + cost <= max(capacity, cost): a request
  // larger than the burst goes once the bucket is empty.
  const double room = std::max(capacity, cost) - cost;
  const double wait_ns = static_cast<double>(empty_at - now) - room / per_ns;
  // Below a nanosecond is rounding (Take rounds up), not a wait.
  if (wait_ns < 1) return now;
  return now + static_cast<int64_t>(std::ceil(wait_ns));
}

void Throttle::Bucket::Take(double cost, int64_t now) {
  if (per_ns == 0 || cost == 0) return;
  const int64_t from = std::max(empty_at, now);
  const double ahead = std::min(
      static_cast<double>(from - now) + std::ceil(cost / per_ns), kMaxAheadNs);
  empty_at = now + static_cast<int64_t>(ahead);
}

Throttle::Throttle(const QosLimits& limits, int64_t now_ns) {
  SetLimits(limits, now_ns);
}

void Throttle::SetLimits(const QosLimits& limits, int64_t now_ns) {
  MutexLock lock(&mu_);
  for (QosLimitKind k : kAllQosLimitKinds) {
    Bucket& b = buckets_[static_cast<int>(k)];
    const RateLimit& l = limits[k];
    if (l.rate == 0) {
      b = Bucket{};
      continue;
    }
    const double level = b.Level(now_ns);  // 0 for a new limit
    b.per_ns = static_cast<double>(l.rate) / 1e9;
    b.capacity = static_cast<double>(l.EffectiveBurst());
    b.empty_at =
        now_ns + static_cast<int64_t>(std::min(level / b.per_ns, kMaxAheadNs));
  }
  limits_ = limits;
  limited_.store(limits.any(), std::memory_order_relaxed);
  // Waiters computed their deadlines with the old limits.
  AdmitReady(now_ns);
}

QosLimits Throttle::limits() const {
  MutexLock lock(&mu_);
  return limits_;
}

int64_t Throttle::ReadyAt(const QosCost& c, int64_t now) const {
  int64_t t = now;
  for (QosLimitKind k : kAllQosLimitKinds) {
    t = std::max(t, buckets_[static_cast<int>(k)].ReadyAt(CostIn(k, c), now));
  }
  return t;
}

void Throttle::Take(const QosCost& c, int64_t now) {
  for (QosLimitKind k : kAllQosLimitKinds) {
    buckets_[static_cast<int>(k)].Take(CostIn(k, c), now);
  }
}

int64_t Throttle::Enter(ThrottleWaiter& w, QosCost cost, int64_t now,
                        const void* flow) {
  MutexLock lock(&mu_);
  w.cost_ = cost;
  w.admitted_ = false;
  if (head_ == nullptr && ReadyAt(cost, now) <= now) {
    Take(cost, now);
    return kAdmitted;
  }
  w.flow_ = flow;
  Link(w);
  return head_ == &w ? ReadyAt(cost, now) : kNever;
}

bool Throttle::TryEnter(QosCost cost, int64_t now) {
  MutexLock lock(&mu_);
  if (head_ != nullptr || ReadyAt(cost, now) > now) return false;
  Take(cost, now);
  return true;
}

int64_t Throttle::Poll(ThrottleWaiter& w, int64_t now) {
  MutexLock lock(&mu_);
  if (w.admitted_) return kAdmitted;
  if (head_ != &w) return kNever;
  const int64_t ready = ReadyAt(w.cost_, now);
  if (ready > now) return ready;
  Admit(w, now);
  // Those behind may fit now too (limits raised or removed); the new head
  // arms its own deadline.
  AdmitReady(now);
  return kAdmitted;
}

void Throttle::Leave(ThrottleWaiter& w, int64_t now) {
  MutexLock lock(&mu_);
  if (w.admitted_ || !w.queued_) return;
  const bool was_head = head_ == &w;
  // Its flow did not use this turn: give it back. With nothing left queued
  // the flow goes on from the round it was last admitted in; else its next
  // waiter may take the round the leaver had, if that was its last.
  Flow& flow = Unlink(w);
  if (flow.queued == 0) {
    flow.last_round = flow.admitted_round;
  } else if (flow.last_round == w.round_) {
    --flow.last_round;
  }
  if (was_head) AdmitReady(now);
}

void Throttle::Link(ThrottleWaiter& w) {
  // The round after the flow's last (queued or admitted), but not one
  // already served: a flow comes back at the earliest in the round being
  // served (the head's), and never twice in one round, so every round ends
  // and no flow waits more than one round per other flow.
  const uint64_t serving = head_ != nullptr ? head_->round_ : round_;
  auto [it, fresh] = flows_.try_emplace(w.flow_);
  Flow& f = it->second;
  w.round_ = fresh ? serving : std::max(serving, f.last_round + 1);
  f.last_round = w.round_;
  ++f.queued;
  ThrottleWaiter* after = tail_;
  while (after != nullptr && after->round_ > w.round_) after = after->prev_;
  w.prev_ = after;
  w.next_ = after != nullptr ? after->next_ : head_;
  if (w.prev_ != nullptr) {
    w.prev_->next_ = &w;
  } else {
    head_ = &w;
  }
  if (w.next_ != nullptr) {
    w.next_->prev_ = &w;
  } else {
    tail_ = &w;
  }
  w.queued_ = true;
  ++waiting_;
}

Throttle::Flow& Throttle::Unlink(ThrottleWaiter& w) {
  if (w.prev_ != nullptr) {
    w.prev_->next_ = w.next_;
  } else {
    head_ = w.next_;
  }
  if (w.next_ != nullptr) {
    w.next_->prev_ = w.prev_;
  } else {
    tail_ = w.prev_;
  }
  w.prev_ = w.next_ = nullptr;
  w.queued_ = false;
  --waiting_;
  // Link made the entry; it is not pruned while it counts `w` as queued.
  Flow& flow = flows_[w.flow_];
  --flow.queued;
  return flow;
}

void Throttle::Admit(ThrottleWaiter& w, int64_t now) {
  Take(w.cost_, now);
  w.admitted_ = true;
  Unlink(w).admitted_round = w.round_;
  if (w.round_ > round_) {
    round_ = w.round_;
    // A flow with nothing queued whose last round is over would come back
    // in the round being served anyway: forget it (so flows_ holds only
    // flows queued, or admitted in this round or, after a Leave, later).
    const uint64_t serving = round_;
    absl::erase_if(flows_, [serving](const auto& e) {
      return e.second.queued == 0 && e.second.last_round < serving;
    });
  }
}

void Throttle::AdmitReady(int64_t now) {
  while (head_ != nullptr) {
    ThrottleWaiter& h = *head_;
    if (ReadyAt(h.cost_, now) > now) {
      h.Wake();  // to arm its (new) deadline
      return;
    }
    Admit(h, now);
    h.Wake();
  }
}

bool Throttle::queued(const ThrottleWaiter& w) const {
  MutexLock lock(&mu_);
  return w.queued_;
}

void WaitCounter::Record(int64_t ns) {
  requests_.fetch_add(1, std::memory_order_relaxed);
  ns_.fetch_add(static_cast<uint64_t>(std::max<int64_t>(ns, 0)),
                std::memory_order_relaxed);
}

void WaitCounter::AddTo(ThrottleStats& s) const {
  s.throttled_requests = requests_.load(std::memory_order_relaxed);
  s.throttled_ns = ns_.load(std::memory_order_relaxed);
}

void Throttle::WakeAll() {
  MutexLock lock(&mu_);
  for (ThrottleWaiter* w = head_; w != nullptr; w = w->next_) w->Wake();
}

void Throttle::RecordWait(int64_t ns) { waits_.Record(ns); }

ThrottleStats Throttle::stats() const {
  ThrottleStats s;
  waits_.AddTo(s);
  MutexLock lock(&mu_);
  s.waiting = waiting_;
  return s;
}

}  // namespace nbdmgr
