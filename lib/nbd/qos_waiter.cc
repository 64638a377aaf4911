#include "lib/nbd/qos_waiter.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>

namespace nbdmgr::nbd {

int64_t QosNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

QosWaiter::QosWaiter(asio::any_io_executor executor)
    : executor_(executor), timer_(executor) {}

asio::awaitable<int64_t> QosWaiter::Pass(Throttle& throttle, QosCost cost) {
  if (cancelled_) co_return 0;
  const int64_t start = QosNowNs();
  int64_t when = throttle.Enter(*this, cost, start);
  if (when == Throttle::kAdmitted) co_return 0;
  while (when != Throttle::kAdmitted) {
    timer_.expires_at(
        when == Throttle::kNever
            ? asio::steady_timer::time_point::max()
            : asio::steady_timer::time_point(std::chrono::nanoseconds(when)));
    // Expiry, or a cancel from Wake() or Cancel(): either way, look again.
    co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    if (cancelled_) {
      throttle.Leave(*this, QosNowNs());
      break;
    }
    when = throttle.Poll(*this, QosNowNs());
  }
  co_return QosNowNs() - start;
}

void QosWaiter::Cancel() {
  cancelled_ = true;
  timer_.cancel();
}

void QosWaiter::Wake() {
  // The timer belongs to our executor: cancel it there. A wake that lands
  // after the wait ended only makes a later wait look again.
  asio::post(executor_, [self = shared_from_this()] { self->timer_.cancel(); });
}

}  // namespace nbdmgr::nbd
