#include "lib/nbd/connection.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

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

// Reads at least MIN bytes into BUF from the TLS stream or the socket,
// without an extra coroutine frame on the request path.
#define NBDMGR_READ(buf, min)                                              \
  (tls_ ? co_await asio::async_read(                                       \
              *tls_, buf, TransferAtLeast{min, &read_progress_}, kAsTuple) \
        : co_await asio::async_read(                                       \
              socket_, buf, TransferAtLeast{min, &read_progress_}, kAsTuple))

Connection::Connection(Socket socket)
    : socket_(std::move(socket)), rbuf_(new uint8_t[kReadBufferSize]) {
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
  tls_ = std::make_unique<TlsStream>(socket_, ctx);
  auto [ec] =
      co_await tls_->async_handshake(asio::ssl::stream_base::server, kAsTuple);
  co_return ec;
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
  TransferAtLeast all{asio::buffer_size(buffers), &write_progress_};
  auto [ec, n] =
      tls_ ? co_await asio::async_write(*tls_, buffers, all, kAsTuple)
           : co_await asio::async_write(socket_, buffers, all, kAsTuple);
  co_return ec;
}

asio::awaitable<ErrorCode> Connection::WriteAll(
    std::span<const uint8_t> bytes) {
  asio::const_buffer b = asio::buffer(bytes.data(), bytes.size());
  Writing writing(writing_);
  TransferAtLeast all{bytes.size(), &write_progress_};
  auto [ec, n] = tls_ ? co_await asio::async_write(*tls_, b, all, kAsTuple)
                      : co_await asio::async_write(socket_, b, all, kAsTuple);
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
