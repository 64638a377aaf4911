#ifndef NBDMGR_LIB_NBD_BACKEND_CALL_H_
#define NBDMGR_LIB_NBD_BACKEND_CALL_H_

#include <atomic>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <exception>
#include <memory>
#include <span>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "lib/backend/backend.h"
#include "lib/nbd/offload.h"

namespace nbdmgr::nbd {

namespace asio = boost::asio;

namespace internal {

// An asynchronous backend call in flight: the awaiting coroutine's handler
// and the backend's scratch space. Deletes itself when it completes, and
// resumes the coroutine on its own executor: inline when completed there
// (a ring completion on the io thread), posted when completed elsewhere or
// before the call that started it has returned.
template <typename Handler>
class PendingCall final : public IoCompletion {
 public:
  explicit PendingCall(Handler handler)
      : handler_(std::move(handler)),
        work_(asio::make_work_guard(asio::get_associated_executor(handler_))) {}

  void Started() { starting_.store(false, std::memory_order_release); }

  void Complete(absl::Status status) override {
    auto ex = work_.get_executor();
    auto resume = [self = std::unique_ptr<PendingCall>(this),
                   status = std::move(status)]() mutable {
      Handler h = std::move(self->handler_);
      self.reset();
      std::move(h)(std::move(status));
    };
    if (starting_.load(std::memory_order_acquire)) {
      asio::post(ex, std::move(resume));
    } else {
      asio::dispatch(ex, std::move(resume));
    }
  }

 private:
  Handler handler_;
  asio::executor_work_guard<asio::associated_executor_t<Handler>> work_;
  std::atomic<bool> starting_{true};
};

}  // namespace internal

// How one connection calls its export's backend: every backend call of the
// request path (handlers, streamed READs and WRITEs) goes through here,
// except a zero-copy READ's, which runs inline because it never blocks
// (RequestHandler::ReadZeroCopy; its exceptions are caught there).
// Backends that never block run inline on the session's thread; blocking
// ones run on the pool, and the caller resumes on its own executor;
// asynchronous ones (caps().async, given the io thread's ring) queue READ,
// WRITE and FLUSH on the ring and resume the caller when they finish. A
// backend that throws (a bug, std::bad_alloc) fails its call with Internal,
// never the session. Not thread-safe; the backend and pool must outlive it.
class BackendCall {
 public:
  // `pool` is required when caps().blocking; `ring` (the session's io
  // thread's, may be null) is given to asynchronous calls. A backend whose
  // asynchronous calls need a ring uses the pool where there is none.
  BackendCall(Backend& backend, asio::thread_pool* pool, IoRing* ring)
      : backend_(backend),
        blocking_(backend.caps().blocking),
        async_(backend.caps().async &&
               (ring != nullptr || !backend.caps().async_needs_ring)),
        async_read_(async_ ||
                    (backend.caps().async_read &&
                     (ring != nullptr || !backend.caps().async_needs_ring))),
        pool_(pool),
        ring_(ring) {}

  Backend& backend() const { return backend_; }
  // Whether READ, WRITE and FLUSH are asynchronous calls.
  bool async() const { return async_; }
  // Whether READ is (WRITE and FLUSH may still run on the pool).
  bool async_reads() const { return async_read_; }

  asio::awaitable<absl::Status> Read(uint64_t offset,
                                     std::span<uint8_t> buf) const {
    if (async_reads()) {
      return Async([this, offset, buf](IoCompletion& done) {
        backend_.ReadAsync(offset, buf, ring_, done);
      });
    }
    return (*this)(
        [&be = backend_, offset, buf] { return be.Read(offset, buf); });
  }
  asio::awaitable<absl::Status> Write(uint64_t offset,
                                      std::span<const uint8_t> data,
                                      bool fua) const {
    if (async()) {
      return Async([this, offset, data, fua](IoCompletion& done) {
        backend_.WriteAsync(offset, data, fua, ring_, done);
      });
    }
    return (*this)([&be = backend_, offset, data, fua] {
      return be.Write(offset, data, fua);
    });
  }
  asio::awaitable<absl::Status> Flush() const {
    if (async()) {
      return Async(
          [this](IoCompletion& done) { backend_.FlushAsync(ring_, done); });
    }
    return (*this)([&be = backend_] { return be.Flush(); });
  }

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
  // Starts `start(done)` and waits for `done`. A backend that throws while
  // starting (before completing: an asynchronous call that completed must
  // not throw) fails the call with Internal.
  template <typename Start>
  static asio::awaitable<absl::Status> Async(Start start) {
    return asio::async_initiate<decltype(asio::use_awaitable),
                                void(absl::Status)>(
        [](auto handler, Start start) {
          auto* call =
              new internal::PendingCall<decltype(handler)>(std::move(handler));
          try {
            start(*call);
          } catch (const std::exception& e) {
            call->Complete(absl::InternalError(
                absl::StrCat("backend failed unexpectedly: ", e.what())));
          } catch (...) {
            call->Complete(absl::InternalError("backend failed unexpectedly"));
          }
          call->Started();
        },
        asio::use_awaitable, std::move(start));
  }

  Backend& backend_;
  const bool blocking_;
  const bool async_;
  const bool async_read_;
  asio::thread_pool* const pool_;
  IoRing* const ring_;
};

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_BACKEND_CALL_H_
