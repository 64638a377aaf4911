#ifndef NBDMGR_LIB_NBD_QOS_WAITER_H_
#define NBDMGR_LIB_NBD_QOS_WAITER_H_

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <memory>

#include "lib/qos/throttle.h"

namespace nbdmgr::nbd {

namespace asio = boost::asio;

// How one connection's reader waits for its requests to pass QoS throttles:
// on a timer of its own executor, armed for the deadline the throttle gives
// (or indefinitely until the throttle wakes it), so a throttled request
// costs no thread and no spinning. One wait at a time. Lives on its
// session's executor (Pass and Cancel are called there); Wake() may come
// from any thread. Owned by a shared_ptr: a wake in flight keeps it alive.
class QosWaiter final : public ThrottleWaiter,
                        public std::enable_shared_from_this<QosWaiter> {
 public:
  explicit QosWaiter(asio::any_io_executor executor);

  // Returns once `throttle` admits `cost`, or at once after Cancel()
  // (then unthrottled). The nanoseconds it waited (0: admitted at once).
  asio::awaitable<int64_t> Pass(Throttle& throttle, QosCost cost);
  // Ends the wait in progress, and makes later ones return at once: the
  // session is stopping, its requests must not wait on limits.
  void Cancel();

  void Wake() override;

 private:
  asio::any_io_executor executor_;
  asio::steady_timer timer_;
  bool cancelled_ = false;
};

// Steady-clock nanoseconds, the time base of every Throttle on the data
// path.
int64_t QosNowNs();

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_QOS_WAITER_H_
