#include "lib/nbd/qos_waiter.h"

#include <poll.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>

#include "lib/util/clock.h"

namespace nbdmgr::nbd {
namespace {

// How often a waiting request looks whether its client hung up.
constexpr int64_t kPeerCheckNs = 1'000'000'000;

// Takes the waiter out of the throttle's queue when Pass ends, however it
// ends (a no-op if it was admitted).
class LeaveOnExit {
 public:
  LeaveOnExit(Throttle& t, ThrottleWaiter& w) : t_(t), w_(w) {}
  ~LeaveOnExit() { t_.Leave(w_, SteadyNowNs()); }
  LeaveOnExit(const LeaveOnExit&) = delete;
  LeaveOnExit& operator=(const LeaveOnExit&) = delete;

 private:
  Throttle& t_;
  ThrottleWaiter& w_;
};

}  // namespace

QosWaiter::QosWaiter(asio::any_io_executor executor, int fd)
    : executor_(executor), timer_(executor), fd_(fd) {}

asio::awaitable<QosPassResult> QosWaiter::Pass(Throttle& throttle, QosCost cost,
                                               std::function<bool()> applies,
                                               const void* flow) {
  if (cancelled_) co_return QosPassResult{CancelledOutcome(), 0};
  const int64_t start = SteadyNowNs();
  int64_t when = throttle.Enter(*this, cost, start, flow);
  if (when == Throttle::kAdmitted) co_return QosPassResult{};
  LeaveOnExit leave(throttle, *this);
  for (;;) {
    const int64_t until = std::min(when, SteadyNowNs() + kPeerCheckNs);
    timer_.expires_at(
        asio::steady_timer::time_point(std::chrono::nanoseconds(until)));
    // Expiry, or a cancel from Wake() or Cancel(): either way, look again.
    co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    const int64_t now = SteadyNowNs();
    if (cancelled_) co_return QosPassResult{CancelledOutcome(), now - start};
    if (PeerGone()) co_return QosPassResult{QosOutcome::kDropped, now - start};
    if (applies && !applies())
      co_return QosPassResult{QosOutcome::kAdmitted, now - start};
    when = throttle.Poll(*this, now);
    if (when == Throttle::kAdmitted) {
      co_return QosPassResult{QosOutcome::kAdmitted, SteadyNowNs() - start};
    }
  }
}

void QosWaiter::Cancel(bool drop) {
  cancelled_ = true;
  drop_ = drop_ || drop;
  timer_.cancel();
}

bool QosWaiter::PeerGone() const {
  pollfd p{fd_, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 &&
         (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

void QosWaiter::Wake() {
  // The timer belongs to our executor: cancel it there. A wake that lands
  // after the wait ended only makes a later wait look again.
  asio::post(executor_, [self = shared_from_this()] { self->timer_.cancel(); });
}

}  // namespace nbdmgr::nbd
