#include "lib/nbd/connection.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace nbdmgr::nbd {
namespace {
constexpr auto kAsTuple = asio::as_tuple(asio::use_awaitable);

// Completion condition: done once MIN bytes have moved, and each system call
// may move as much as the buffers hold. Asio's own transfer_all and
// transfer_at_least hand the socket at most 64 KiB per call
// (default_max_transfer_size): a 1 MiB reply then took 16 sendmsg calls and
// epoll round trips, and over TCP with TCP_NODELAY each call left a runt
// segment behind (64 KiB = one 65483-byte loopback segment + 53 bytes),
// doubling the segments and ACKs both ends process per byte.
// It also counts every transfer that moved bytes in `*progress`.
struct TransferAtLeast {
  size_t min;
  uint64_t* progress;
  size_t operator()(const ErrorCode& ec, size_t done) const {
    if (done != 0) ++*progress;
    return (ec || done >= min) ? 0 : std::numeric_limits<size_t>::max();
  }
};

// Marks a WriteAll in progress for its scope.
class Writing {
 public:
  explicit Writing(int& n) : n_(n) { ++n_; }
  ~Writing() { --n_; }
  Writing(const Writing&) = delete;
  Writing& operator=(const Writing&) = delete;

 private:
  int& n_;
};
}  // namespace

// Reads at least MIN bytes into BUF through TLS or from the socket, without
// an extra coroutine frame on the plain request path.
#define NBDMGR_READ(buf, min)        \
  (tls_ ? co_await TlsRead(buf, min) \
        : co_await asio::async_read( \
              socket_, buf, TransferAtLeast{min, &read_progress_}, kAsTuple))

Connection::Connection(Socket socket)
    : socket_(std::move(socket)),
      flush_done_(socket_.get_executor()),
      rbuf_(new uint8_t[kReadBufferSize]) {
  ErrorCode ec;
  auto ep = socket_.remote_endpoint(ec);
  if (!ec && ep.protocol().family() == AF_INET) {
    is_tcp_ = true;
    auto* sin = reinterpret_cast<const sockaddr_in*>(ep.data());
    asio::ip::address_v4 a(ntohl(sin->sin_addr.s_addr));
    peer_ = absl::StrCat("tcp:", a.to_string(), ":", ntohs(sin->sin_port));
  } else if (!ec && ep.protocol().family() == AF_INET6) {
    is_tcp_ = true;
    auto* sin6 = reinterpret_cast<const sockaddr_in6*>(ep.data());
    asio::ip::address_v6::bytes_type b;
    std::memcpy(b.data(), &sin6->sin6_addr, 16);
    peer_ = absl::StrCat("tcp:[", asio::ip::address_v6(b).to_string(),
                         "]:", ntohs(sin6->sin6_port));
  } else {
    peer_ = "unix";
  }
  if (is_tcp_) {
    int one = 1;
    ::setsockopt(socket_.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one,
                 sizeof(one));
  }
}

asio::awaitable<ErrorCode> Connection::StartTls(asio::ssl::context& ctx) {
  if (rpos_ != rend_) {
    co_return asio::error::make_error_code(asio::error::invalid_argument);
  }
  absl::StatusOr<std::unique_ptr<TlsEngine>> engine =
      TlsEngine::Create(ctx.native_handle());
  if (!engine.ok()) {
    co_return asio::error::make_error_code(asio::error::no_memory);
  }
  tls_ = std::move(*engine);
  for (;;) {
    ErrorCode ec;
    const TlsEngine::Want want = tls_->Handshake(&ec);
    // Our flight, or the alert telling the client why it failed.
    if (!tls_->PendingOutput().empty()) {
      ErrorCode sent = co_await TlsFlush();
      if (ec) co_return ec;
      if (sent) co_return sent;
    } else if (want == TlsEngine::Want::kOutput) {
      ec = asio::ssl::error::unexpected_result;  // full, yet nothing to send
    }
    if (ec) co_return ec;
    if (want == TlsEngine::Want::kNothing) {
      spdlog::debug("{}: TLS established: {} {}", peer_, tls_->protocol(),
                    tls_->cipher());
      co_return ErrorCode{};
    }
    if (want == TlsEngine::Want::kInput) {
      if (ErrorCode r = co_await TlsReceive(); r) co_return r;
    }
  }
}

asio::awaitable<ErrorCode> Connection::TlsReceive() {
  std::span<uint8_t> space = tls_->InputSpace();
  auto [ec, n] = co_await socket_.async_read_some(
      asio::buffer(space.data(), space.size()), kAsTuple);
  if (n > 0) {
    tls_->InputFilled(n);
    ++read_progress_;
    co_return ErrorCode{};
  }
  co_return tls_->MapTransportError(
      ec ? ec : asio::error::make_error_code(asio::error::eof));
}

asio::awaitable<ErrorCode> Connection::TlsFlush() {
  // The reader sends what its reads made (rare: alerts, a KeyUpdate) while
  // the writer may want to send a batch: one sender at a time, in order.
  while (flushing_) {
    flush_done_.expires_at(asio::steady_timer::time_point::max());
    co_await flush_done_.async_wait(kAsTuple);
  }
  if (flush_error_) co_return flush_error_;
  flushing_ = true;
  for (;;) {
    // Records added while a send is in flight are taken by the next one.
    std::span<const uint8_t> out = tls_->PendingOutput();
    if (out.empty()) break;
    auto [ec, n] = co_await socket_.async_write_some(
        asio::buffer(out.data(), out.size()), kAsTuple);
    if (n > 0) {
      tls_->OutputSent(n);
      ++write_progress_;
    }
    if (ec) {
      // Part of a record may have gone: nothing sent after it could be
      // decrypted. Every later flush fails.
      flush_error_ = ec;
      break;
    }
  }
  flushing_ = false;
  flush_done_.cancel();
  co_return flush_error_;
}

asio::awaitable<std::tuple<ErrorCode, size_t>> Connection::TlsRead(
    asio::mutable_buffer buf, size_t min) {
  uint8_t* const p = static_cast<uint8_t*>(buf.data());
  const size_t len = buf.size();
  size_t done = 0;
  for (;;) {
    // Decrypt every whole record already received (up to `len` bytes).
    ErrorCode ec;
    TlsEngine::Want want = TlsEngine::Want::kNothing;
    while (done < len) {
      size_t n = 0;
      want = tls_->Read({p + done, len - done}, &n, &ec);
      done += n;
      if (ec || want != TlsEngine::Want::kNothing) break;
    }
    // Output a read made (an alert, a KeyUpdate) goes out now, unless a
    // send in progress takes it along.
    if (!tls_->PendingOutput().empty() &&
        (!flushing_ || want == TlsEngine::Want::kOutput)) {
      ErrorCode sent = co_await TlsFlush();
      if (!ec) ec = sent;
    }
    if (ec) co_return std::tuple{ec, done};
    if (done >= min) co_return std::tuple{ErrorCode{}, done};
    if (want == TlsEngine::Want::kInput) {
      if (ErrorCode r = co_await TlsReceive(); r) co_return std::tuple{r, done};
    }
  }
}

asio::awaitable<ErrorCode> Connection::TlsWrite(
    std::span<const asio::const_buffer> buffers) {
  TlsEngine::Cursor at;
  for (;;) {
    ErrorCode ec;
    const TlsEngine::Want want = tls_->Seal(buffers, &at, &ec);
    if (ec) co_return ec;
    if (ErrorCode sent = co_await TlsFlush(); sent) co_return sent;
    if (want == TlsEngine::Want::kNothing) co_return ErrorCode{};
  }
}

asio::awaitable<ErrorCode> Connection::ReadExact(std::span<uint8_t> dst) {
  if (dst.empty()) co_return ErrorCode{};
  size_t have = std::min(rend_ - rpos_, dst.size());
  std::memcpy(dst.data(), rbuf_.get() + rpos_, have);
  rpos_ += have;
  size_t need = dst.size() - have;
  if (need == 0) co_return ErrorCode{};
  // rbuf_ is empty here. Large reads go straight to the destination.
  rpos_ = rend_ = 0;
  if (need >= kReadBufferSize / 2) {
    auto [ec, n] = NBDMGR_READ(asio::buffer(dst.data() + have, need), need);
    co_return n == need ? ErrorCode{} : ec;
  }
  auto [ec, n] = NBDMGR_READ(asio::buffer(rbuf_.get(), kReadBufferSize), need);
  if (n < need)
    co_return ec ? ec : asio::error::make_error_code(asio::error::eof);
  std::memcpy(dst.data() + have, rbuf_.get(), need);
  rpos_ = need;
  rend_ = n;
  co_return ErrorCode{};
}

asio::awaitable<ErrorCode> Connection::Skip(uint64_t n) {
  while (n > 0) {
    if (rpos_ == rend_) {
      rpos_ = 0;
      auto [ec, got] =
          NBDMGR_READ(asio::buffer(rbuf_.get(), kReadBufferSize), 1);
      rend_ = got;
      if (ec && got == 0) co_return ec;
    }
    size_t take = std::min<uint64_t>(n, rend_ - rpos_);
    rpos_ += take;
    n -= take;
  }
  co_return ErrorCode{};
}

asio::awaitable<ErrorCode> Connection::WriteAll(
    std::span<const asio::const_buffer> buffers) {
  Writing writing(writing_);
  if (tls_) co_return co_await TlsWrite(buffers);
  TransferAtLeast all{asio::buffer_size(buffers), &write_progress_};
  auto [ec, n] = co_await asio::async_write(socket_, buffers, all, kAsTuple);
  co_return ec;
}

asio::awaitable<ErrorCode> Connection::WriteAll(
    std::span<const uint8_t> bytes) {
  asio::const_buffer b = asio::buffer(bytes.data(), bytes.size());
  Writing writing(writing_);
  if (tls_) co_return co_await TlsWrite({&b, 1});
  TransferAtLeast all{bytes.size(), &write_progress_};
  auto [ec, n] = co_await asio::async_write(socket_, b, all, kAsTuple);
  co_return ec;
}

void Connection::ShutdownRead() {
  ErrorCode ec;
  socket_.shutdown(asio::socket_base::shutdown_receive, ec);
}

void Connection::Close() {
  ErrorCode ec;
  socket_.shutdown(asio::socket_base::shutdown_both, ec);
  socket_.close(ec);
}

#undef NBDMGR_READ

}  // namespace nbdmgr::nbd
