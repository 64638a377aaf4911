#include "lib/buffer/memory_budget.h"

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <memory>

namespace nbdmgr {

namespace asio = boost::asio;

bool MemoryBudget::TryCharge(uint64_t n) {
  std::lock_guard lock(mu_);
  if (!waiters_.empty() || !FitsLocked(n)) return false;
  used_ += n;
  peak_ = std::max(peak_, used_);
  return true;
}

void MemoryBudget::ForceCharge(uint64_t n) {
  std::lock_guard lock(mu_);
  used_ += n;
  peak_ = std::max(peak_, used_);
}

asio::awaitable<void> MemoryBudget::Charge(uint64_t n) {
  if (TryCharge(n)) co_return;
  auto start = std::chrono::steady_clock::now();
  asio::any_io_executor ex = co_await asio::this_coro::executor;
  co_await asio::async_initiate<decltype(asio::use_awaitable), void()>(
      [this, n, ex](auto handler) {
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        std::deque<Waiter> ready;
        {
          std::lock_guard lock(mu_);
          waiters_.push_back(
              Waiter{n, ex, [shared] { std::move (*shared)(); }});
          ++waits_;
          // The cap may have changed, or bytes come back, since TryCharge.
          ready = GrantLocked();
        }
        Resume(std::move(ready));
      },
      asio::use_awaitable);
  auto waited = std::chrono::steady_clock::now() - start;
  std::lock_guard lock(mu_);
  wait_ns_ += static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(waited).count());
}

std::deque<MemoryBudget::Waiter> MemoryBudget::GrantLocked() {
  std::deque<Waiter> ready;
  while (!waiters_.empty() && FitsLocked(waiters_.front().bytes)) {
    used_ += waiters_.front().bytes;
    peak_ = std::max(peak_, used_);
    ready.push_back(std::move(waiters_.front()));
    waiters_.pop_front();
  }
  return ready;
}

void MemoryBudget::Resume(std::deque<Waiter> ready) {
  for (Waiter& w : ready) asio::post(w.executor, std::move(w.resume));
}

void MemoryBudget::Release(uint64_t n) {
  std::deque<Waiter> ready;
  {
    std::lock_guard lock(mu_);
    used_ -= std::min(used_, n);
    ready = GrantLocked();
  }
  Resume(std::move(ready));
}

void MemoryBudget::set_cap(uint64_t cap) {
  std::deque<Waiter> ready;
  {
    std::lock_guard lock(mu_);
    cap_ = cap;
    cap_mirror_.store(cap, std::memory_order_relaxed);
    ready = GrantLocked();
  }
  Resume(std::move(ready));
}

uint64_t MemoryBudget::headroom() const {
  std::lock_guard lock(mu_);
  if (cap_ == 0) return UINT64_MAX;
  return cap_ > used_ ? cap_ - used_ : 0;
}

MemoryBudgetStats MemoryBudget::stats() const {
  std::lock_guard lock(mu_);
  return MemoryBudgetStats{cap_,   used_,    peak_,
                           waits_, wait_ns_, waiters_.size()};
}

}  // namespace nbdmgr
