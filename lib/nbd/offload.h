#ifndef NBDMGR_LIB_NBD_OFFLOAD_H_
#define NBDMGR_LIB_NBD_OFFLOAD_H_

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

namespace nbdmgr::nbd {

// Runs `fn` (which may block) on `pool` and resumes the awaiting coroutine
// on its own executor with fn's result. `fn` must be callable once with no
// arguments; if it throws, the exception is caught on the pool (a pool
// thread never dies of it) and rethrown in the awaiting coroutine, whose
// caller answers the request with EIO. References `fn` captures must stay
// valid until the co_await completes (they do: the caller is suspended).
template <typename Fn>
boost::asio::awaitable<decltype(std::declval<Fn&>()())> RunBlocking(
    boost::asio::thread_pool& pool, Fn fn) {
  using Result = decltype(fn());
  namespace asio = boost::asio;
  co_return co_await asio::async_initiate<decltype(asio::use_awaitable),
                                          void(std::exception_ptr, Result)>(
      [&pool](auto handler, Fn f) {
        auto work =
            asio::make_work_guard(asio::get_associated_executor(handler));
        asio::post(pool, [f = std::move(f), handler = std::move(handler),
                          work = std::move(work)]() mutable {
          // Only the message crosses threads: the exception object is made
          // and consumed on the awaiting coroutine's thread.
          std::optional<std::string> failure;
          Result r{};
          try {
            r = f();
          } catch (const std::exception& e) {
            failure = e.what();
          } catch (...) {
            failure = "unknown exception";
          }
          auto ex = work.get_executor();
          asio::dispatch(
              ex, [handler = std::move(handler), failure = std::move(failure),
                   r = std::move(r)]() mutable {
                std::exception_ptr error;
                if (failure) {
                  error = std::make_exception_ptr(std::runtime_error(*failure));
                }
                std::move(handler)(error, std::move(r));
              });
        });
      },
      asio::use_awaitable, std::move(fn));
}

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_OFFLOAD_H_
