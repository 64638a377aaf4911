#ifndef NBDMGR_LIB_NBD_QOS_WAITER_H_
#define NBDMGR_LIB_NBD_QOS_WAITER_H_

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <functional>
#include <memory>

#include "lib/qos/throttle.h"

namespace nbdmgr::nbd {

namespace asio = boost::asio;

// How a wait for QoS limits ended.
enum class QosOutcome {
  kAdmitted,   // the throttle let it through (or no longer applies)
  kCancelled,  // Cancel(false): the session is stopping; go on unthrottled
  kDropped,    // Cancel(true), or the client closed its connection: the
               // request must not run (nobody will read its reply)
};

struct QosPassResult {
  QosOutcome outcome = QosOutcome::kAdmitted;
  int64_t waited_ns = 0;  // 0: admitted at once
};

// How one connection's reader waits for its requests to pass QoS throttles:
// on a timer of its own executor, armed for the deadline the throttle gives
// (or until the throttle wakes it), so a throttled request costs no thread
// and no spinning. While it waits it looks at the socket about once a
// second: a client that closed its connection ends the wait (kDropped), so
// a client that sends requests and hangs up holds nothing for long. One
// wait at a time. Lives on its session's executor (Pass and Cancel are
// called there); Wake() may come from any thread. Owned by a shared_ptr: a
// wake in flight keeps it alive.
class QosWaiter final : public ThrottleWaiter,
                        public std::enable_shared_from_this<QosWaiter> {
 public:
  // `fd`: the connection's socket, polled for the client hanging up.
  QosWaiter(asio::any_io_executor executor, int fd);

  // Waits until `throttle` admits `cost` (queued as part of `flow`, see
  // Throttle::Enter), `applies` (if set) turns false (the throttle is no
  // longer the request's: kAdmitted), or the wait is cancelled or the
  // client hangs up. The waiter is out of the throttle's queue when it
  // returns, however it returns (also by an exception).
  asio::awaitable<QosPassResult> Pass(Throttle& throttle, QosCost cost,
                                      std::function<bool()> applies = {},
                                      const void* flow = nullptr);
  // Ends the wait in progress, and makes later ones end at once: with
  // `drop`, as kDropped (the connection is closed), else as kCancelled.
  void Cancel(bool drop);

  void Wake() override;

 private:
  // Whether the client has closed its side of the connection (or it broke).
  bool PeerGone() const;
  QosOutcome CancelledOutcome() const {
    return drop_ ? QosOutcome::kDropped : QosOutcome::kCancelled;
  }

  asio::any_io_executor executor_;
  asio::steady_timer timer_;
  const int fd_;
  bool cancelled_ = false;
  bool drop_ = false;
};

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_QOS_WAITER_H_
