#ifndef NBDMGR_LIB_NBD_BACKEND_CALL_H_
#define NBDMGR_LIB_NBD_BACKEND_CALL_H_

#include <boost/asio/awaitable.hpp>
#include <boost/asio/thread_pool.hpp>
#include <exception>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "lib/backend/backend.h"
#include "lib/nbd/offload.h"

namespace nbdmgr::nbd {

namespace asio = boost::asio;

// How one connection calls its export's backend: every backend call of the
// request path (handlers, streamed READs and WRITEs) goes through here,
// except a zero-copy READ's, which runs inline because it never blocks
// (RequestHandler::ReadZeroCopy; its exceptions are caught there).
// Backends that never block run inline on the session's thread; blocking
// ones run on the pool, and the caller resumes on its own executor. A
// backend that throws (a bug, std::bad_alloc) fails its call with Internal,
// never the session. Not thread-safe; the backend and pool must outlive it.
class BackendCall {
 public:
  // `pool` is required when caps().blocking.
  BackendCall(Backend& backend, bool blocking, asio::thread_pool* pool)
      : backend_(backend), blocking_(blocking), pool_(pool) {}

  Backend& backend() const { return backend_; }

  // Runs `fn` (a callable returning absl::Status, using backend()); the
  // references it captures must stay valid until the co_await completes.
  template <typename Fn>
  asio::awaitable<absl::Status> operator()(Fn fn) const {
    try {
      if (blocking_) co_return co_await RunBlocking(*pool_, std::move(fn));
      co_return fn();
    } catch (const std::exception& e) {
      co_return absl::InternalError(
          absl::StrCat("backend failed unexpectedly: ", e.what()));
    } catch (...) {
      co_return absl::InternalError("backend failed unexpectedly");
    }
  }

 private:
  Backend& backend_;
  const bool blocking_;
  asio::thread_pool* const pool_;
};

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_BACKEND_CALL_H_
