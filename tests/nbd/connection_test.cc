// Connection moves whole gather lists and exact reads through sockets that
// only take part of them per system call: a small send buffer forces
// partial writes mid-piece, a peer that writes in odd chunks forces short
// reads. Every byte must arrive once and in order, over a Unix socketpair
// and over TCP loopback, in the clear and through TLS (against an OpenSSL
// client), where a reader and a writer also run at once while the client
// asks for key updates.

#include "lib/nbd/connection.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_future.hpp>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "tests/tls/test_credentials.h"

namespace nbdmgr::nbd {
namespace {

// A connected pair of file descriptors: [0] becomes the Connection, [1] is
// the test's end.
struct FdPair {
  int fd[2] = {-1, -1};
  ~FdPair() {
    for (int f : fd) {
      if (f >= 0) ::close(f);
    }
  }
};

void MakeUnixPair(FdPair* p) {
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p->fd), 0);
}

void MakeTcpPair(FdPair* p) {
  int ls = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(ls, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  ASSERT_EQ(::bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(::listen(ls, 1), 0);
  ASSERT_EQ(::getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len), 0);
  p->fd[1] = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_EQ(::connect(p->fd[1], reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  p->fd[0] = ::accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  ::close(ls);
  ASSERT_GE(p->fd[0], 0);
}

Socket AdoptSocket(boost::asio::io_context& ioc, int fd, int family) {
  return Socket(ioc, boost::asio::generic::stream_protocol(family, SOCK_STREAM),
                fd);
}

std::vector<uint8_t> Pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

class ConnectionTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (GetParam() == AF_UNIX) {
      MakeUnixPair(&pair_);
    } else {
      MakeTcpPair(&pair_);
    }
    // The test's end never blocks for long: a Connection that stops early
    // fails the test instead of hanging it.
    timeval tv{.tv_sec = 10, .tv_usec = 0};
    ASSERT_EQ(
        ::setsockopt(pair_.fd[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
    ASSERT_EQ(
        ::setsockopt(pair_.fd[1], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)), 0);
  }
  // Runs `body` on an io_context thread and waits for its ErrorCode.
  template <typename F>
  ErrorCode Run(F body) {
    auto f = boost::asio::co_spawn(ioc_, body(), boost::asio::use_future);
    std::thread t([this] { ioc_.run(); });
    ErrorCode ec = f.get();
    t.join();
    ioc_.restart();
    return ec;
  }

  FdPair pair_;
  boost::asio::io_context ioc_;
};

// More pieces than one sendmsg takes (Asio passes at most 64), of sizes on
// both sides of a loopback segment and a page, through a 4 KiB send buffer
// that a slow reader drains in 1000-byte bites.
TEST_P(ConnectionTest, GatherWriteArrivesWholeThroughPartialWrites) {
  int small = 4096;
  ASSERT_EQ(
      ::setsockopt(pair_.fd[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)),
      0);
  std::mt19937 rng(7);
  std::vector<std::vector<uint8_t>> pieces;
  std::vector<uint8_t> expected;
  for (int i = 0; i < 200; ++i) {
    size_t n = i % 7 == 0 ? 1 : 1 + rng() % 70000;
    pieces.push_back(Pattern(n, i));
    expected.insert(expected.end(), pieces.back().begin(), pieces.back().end());
  }
  std::vector<boost::asio::const_buffer> iov;
  for (const auto& p : pieces) iov.emplace_back(p.data(), p.size());

  std::vector<uint8_t> got;
  std::thread reader([&] {
    uint8_t buf[1000];
    while (got.size() < expected.size()) {
      ssize_t n = ::recv(pair_.fd[1], buf, sizeof(buf), 0);
      if (n <= 0) break;
      got.insert(got.end(), buf, buf + n);
    }
  });
  Connection conn(AdoptSocket(ioc_, pair_.fd[0], GetParam()));
  pair_.fd[0] = -1;  // owned by the Connection now
  ErrorCode ec = Run([&]() { return conn.WriteAll(iov); });
  reader.join();
  EXPECT_FALSE(ec) << ec.message();
  ASSERT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected);
}

// The peer writes one stream in odd-sized chunks with pauses; the
// Connection reads it back as a mix of small buffered reads, large direct
// reads and skips, which must see exactly the right bytes.
TEST_P(ConnectionTest, ExactReadsAndSkipsAcrossOddChunks) {
  const std::vector<size_t> reads = {3,     1,     8191, 8192, 1 << 20, 5,
                                     70000, 16384, 7,    1,    300000};
  const std::vector<bool> skip = {false, true,  false, true, false, false,
                                  true,  false, false, true, false};
  size_t total = 0;
  for (size_t n : reads) total += n;
  const std::vector<uint8_t> stream = Pattern(total, 99);
  std::thread writer([&] {
    std::mt19937 rng(3);
    size_t done = 0;
    while (done < stream.size()) {
      size_t n = std::min<size_t>(stream.size() - done, 1 + rng() % 90000);
      ssize_t w = ::send(pair_.fd[1], stream.data() + done, n, MSG_NOSIGNAL);
      if (w <= 0) break;
      done += w;
      if (rng() % 4 == 0) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
  });
  Connection conn(AdoptSocket(ioc_, pair_.fd[0], GetParam()));
  pair_.fd[0] = -1;
  std::vector<std::vector<uint8_t>> got(reads.size());
  ErrorCode ec = Run([&]() -> boost::asio::awaitable<ErrorCode> {
    for (size_t i = 0; i < reads.size(); ++i) {
      ErrorCode e;
      if (skip[i]) {
        e = co_await conn.Skip(reads[i]);
      } else {
        got[i].resize(reads[i]);
        e = co_await conn.ReadExact(got[i]);
      }
      if (e) co_return e;
    }
    co_return ErrorCode{};
  });
  writer.join();
  ASSERT_FALSE(ec) << ec.message();
  size_t at = 0;
  for (size_t i = 0; i < reads.size(); ++i) {
    if (!skip[i]) {
      EXPECT_TRUE(std::equal(got[i].begin(), got[i].end(), stream.begin() + at))
          << "read " << i << " of " << reads[i] << " bytes at " << at;
    }
    at += reads[i];
  }
}

// A stream that ends inside a read reports end of stream, not success.
TEST_P(ConnectionTest, StreamEndingMidReadIsAnError) {
  const std::vector<uint8_t> some = Pattern(100000, 5);
  ASSERT_EQ(::send(pair_.fd[1], some.data(), some.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(some.size()));
  ::shutdown(pair_.fd[1], SHUT_WR);
  Connection conn(AdoptSocket(ioc_, pair_.fd[0], GetParam()));
  pair_.fd[0] = -1;
  std::vector<uint8_t> dst(200000);
  ErrorCode ec = Run([&]() { return conn.ReadExact(dst); });
  EXPECT_EQ(ec, boost::asio::error::eof) << ec.message();
}

INSTANTIATE_TEST_SUITE_P(Transports, ConnectionTest,
                         ::testing::Values(AF_UNIX, AF_INET),
                         [](const auto& info) {
                           return info.param == AF_UNIX ? "Unix" : "Tcp";
                         });

// The same through TLS: the test's end is a blocking OpenSSL client on
// fd[1] (its receive and send timeouts bound every wait).
class TlsConnectionTest : public ConnectionTest {
 protected:
  void TearDown() override {
    if (client_ != nullptr) SSL_free(client_);
  }
  // Makes the Connection and runs both handshakes.
  void Connect(int max_version = TLS1_3_VERSION) {
    server_ctx_ = testing::TestServerContext();
    client_ctx_ = testing::TestClientContext(max_version);
    conn_ = std::make_unique<Connection>(
        AdoptSocket(ioc_, pair_.fd[0], GetParam()));
    pair_.fd[0] = -1;
    client_ = SSL_new(client_ctx_.get());
    SSL_set_fd(client_, pair_.fd[1]);
    int rc = 0;
    std::thread t([&] { rc = SSL_connect(client_); });
    ErrorCode ec = Run([&]() { return conn_->StartTls(*server_ctx_); });
    t.join();
    ASSERT_FALSE(ec) << ec.message();
    ASSERT_EQ(rc, 1);
    ASSERT_TRUE(conn_->tls());
  }

  std::unique_ptr<boost::asio::ssl::context> server_ctx_;
  testing::ClientContext client_ctx_;
  std::unique_ptr<Connection> conn_;
  SSL* client_ = nullptr;
};

// Many replies' worth of small and large pieces through a 4 KiB send
// buffer: every byte arrives, and progress moved.
TEST_P(TlsConnectionTest, GatherWriteArrivesWholeThroughPartialWrites) {
  ASSERT_NO_FATAL_FAILURE(Connect());
  int small = 4096;
  ASSERT_EQ(::setsockopt(conn_->socket().native_handle(), SOL_SOCKET, SO_SNDBUF,
                         &small, sizeof(small)),
            0);
  std::mt19937 rng(7);
  std::vector<std::vector<uint8_t>> pieces;
  std::vector<uint8_t> expected;
  for (int i = 0; i < 200; ++i) {
    size_t n = i % 3 == 0 ? 16 : i % 7 == 0 ? 256 << 10 : 1 + rng() % 70000;
    pieces.push_back(Pattern(n, i));
    expected.insert(expected.end(), pieces.back().begin(), pieces.back().end());
  }
  std::vector<boost::asio::const_buffer> iov;
  for (const auto& p : pieces) iov.emplace_back(p.data(), p.size());

  std::vector<uint8_t> got;
  std::thread reader([&] {
    uint8_t buf[1000];
    while (got.size() < expected.size()) {
      int n = SSL_read(client_, buf, sizeof(buf));
      if (n <= 0) break;
      got.insert(got.end(), buf, buf + n);
    }
  });
  const uint64_t progress = conn_->write_progress();
  ErrorCode ec = Run([&]() { return conn_->WriteAll(iov); });
  reader.join();
  EXPECT_FALSE(ec) << ec.message();
  ASSERT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected);
  EXPECT_GT(conn_->write_progress(), progress + 10);
  EXPECT_FALSE(conn_->writing());
}

// The client writes one stream in odd-sized pieces with pauses; small
// buffered reads, large direct reads and skips see exactly its bytes.
TEST_P(TlsConnectionTest, ExactReadsAndSkipsAcrossOddChunks) {
  ASSERT_NO_FATAL_FAILURE(Connect());
  const std::vector<size_t> reads = {3,     1,     8191, 8192, 1 << 20, 5,
                                     70000, 16384, 7,    1,    300000,  28,
                                     4096,  28,    4096, 28,   16380};
  size_t total = 0;
  for (size_t n : reads) total += n;
  const std::vector<uint8_t> stream = Pattern(total, 99);
  std::thread writer([&] {
    std::mt19937 rng(3);
    size_t done = 0;
    while (done < stream.size()) {
      size_t n = std::min<size_t>(stream.size() - done, 1 + rng() % 40000);
      int w = SSL_write(client_, stream.data() + done, static_cast<int>(n));
      if (w <= 0) break;
      done += w;
      if (rng() % 4 == 0) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
  });
  const uint64_t progress = conn_->read_progress();
  std::vector<std::vector<uint8_t>> got(reads.size());
  ErrorCode ec = Run([&]() -> boost::asio::awaitable<ErrorCode> {
    for (size_t i = 0; i < reads.size(); ++i) {
      ErrorCode e;
      if (i % 3 == 1) {
        e = co_await conn_->Skip(reads[i]);
      } else {
        got[i].resize(reads[i]);
        e = co_await conn_->ReadExact(got[i]);
      }
      if (e) co_return e;
    }
    co_return ErrorCode{};
  });
  writer.join();
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_GT(conn_->read_progress(), progress);
  size_t at = 0;
  for (size_t i = 0; i < reads.size(); ++i) {
    if (i % 3 != 1) {
      EXPECT_TRUE(std::equal(got[i].begin(), got[i].end(), stream.begin() + at))
          << "read " << i << " of " << reads[i] << " bytes at " << at;
    }
    at += reads[i];
  }
}

// The client's close_notify inside a read is end of stream (eof).
TEST_P(TlsConnectionTest, CloseNotifyMidReadIsEof) {
  ASSERT_NO_FATAL_FAILURE(Connect());
  const std::vector<uint8_t> some = Pattern(100000, 5);
  ASSERT_EQ(SSL_write(client_, some.data(), static_cast<int>(some.size())),
            static_cast<int>(some.size()));
  ASSERT_EQ(SSL_shutdown(client_), 0);  // close_notify sent, none received
  std::vector<uint8_t> dst(200000);
  ErrorCode ec = Run([&]() { return conn_->ReadExact(dst); });
  EXPECT_EQ(ec, boost::asio::error::eof) << ec.message();
}

// The transport ending without close_notify is a truncated stream, as
// asio::ssl::stream reports it.
TEST_P(TlsConnectionTest, EndWithoutCloseNotifyIsTruncation) {
  ASSERT_NO_FATAL_FAILURE(Connect());
  const std::vector<uint8_t> some = Pattern(100000, 5);
  ASSERT_EQ(SSL_write(client_, some.data(), static_cast<int>(some.size())),
            static_cast<int>(some.size()));
  ::shutdown(pair_.fd[1], SHUT_WR);
  std::vector<uint8_t> dst(200000);
  ErrorCode ec = Run([&]() { return conn_->ReadExact(dst); });
  EXPECT_EQ(ec, boost::asio::ssl::error::stream_truncated) << ec.message();
}

// TLS 1.2 works the same way (its records carry an explicit nonce).
TEST_P(TlsConnectionTest, Tls12RoundTrip) {
  ASSERT_NO_FATAL_FAILURE(Connect(TLS1_2_VERSION));
  EXPECT_EQ(SSL_version(client_), TLS1_2_VERSION);
  const std::vector<uint8_t> up = Pattern(50000, 8);
  const std::vector<uint8_t> down = Pattern(70000, 9);
  ASSERT_EQ(SSL_write(client_, up.data(), static_cast<int>(up.size())),
            static_cast<int>(up.size()));
  std::vector<uint8_t> got(up.size());
  std::vector<uint8_t> back;
  std::thread reader([&] {
    uint8_t buf[5000];
    while (back.size() < down.size()) {
      int n = SSL_read(client_, buf, sizeof(buf));
      if (n <= 0) break;
      back.insert(back.end(), buf, buf + n);
    }
  });
  ErrorCode ec = Run([&]() -> boost::asio::awaitable<ErrorCode> {
    if (ErrorCode e = co_await conn_->ReadExact(got); e) co_return e;
    co_return co_await conn_->WriteAll(std::span<const uint8_t>(down));
  });
  reader.join();
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_TRUE(got == up);
  EXPECT_TRUE(back == down);
}

// A session's reader and writer at once, both directions busy, while the
// client keeps asking for key updates: the server's KeyUpdate replies are
// made by its reads and must go out in order with the writer's records.
TEST_P(TlsConnectionTest, ReaderAndWriterAtOnceThroughKeyUpdates) {
  ASSERT_NO_FATAL_FAILURE(Connect());
  const std::vector<uint8_t> up = Pattern(6 << 20, 10);
  std::vector<std::vector<uint8_t>> pieces;
  std::vector<uint8_t> down;
  for (int i = 0; i < 400; ++i) {
    pieces.push_back(Pattern(i % 2 == 0   ? 16
                             : i % 9 == 1 ? 256 << 10
                                          : 4096,
                             i));
    down.insert(down.end(), pieces.back().begin(), pieces.back().end());
  }
  std::vector<uint8_t> back;
  bool client_ok = false;
  // Counts the server's KeyUpdate messages the client receives.
  int updates_received = 0;
  SSL_set_msg_callback(
      client_, [](int write_p, int, int content_type, const void* buf,
                  size_t len, SSL*, void* arg) {
        if (write_p == 0 && content_type == SSL3_RT_HANDSHAKE && len > 0 &&
            static_cast<const uint8_t*>(buf)[0] == SSL3_MT_KEY_UPDATE) {
          ++*static_cast<int*>(arg);
        }
      });
  SSL_set_msg_callback_arg(client_, &updates_received);
  std::thread client([&] {
    ASSERT_EQ(::fcntl(pair_.fd[1], F_SETFL, O_NONBLOCK), 0);
    size_t sent = 0, next_update = 0;
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (sent < up.size() || back.size() < down.size()) {
      if (std::chrono::steady_clock::now() > deadline) return;
      bool moved = false;
      if (sent < up.size()) {
        // (Refused while a write is pending or the last update is not
        // sent yet: try again later.)
        if (sent >= next_update) {
          if (SSL_key_update(client_, SSL_KEY_UPDATE_REQUESTED) == 1) {
            next_update += 512 * 1024;
          } else {
            ERR_clear_error();
          }
        }
        int n = SSL_write(
            client_, up.data() + sent,
            static_cast<int>(std::min<size_t>(up.size() - sent, 100000)));
        if (n > 0) {
          sent += n;
          moved = true;
        } else {
          int e = SSL_get_error(client_, n);
          ASSERT_TRUE(e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
              << e;
        }
      }
      uint8_t buf[16384];
      int n = SSL_read(client_, buf, sizeof(buf));
      if (n > 0) {
        back.insert(back.end(), buf, buf + n);
        moved = true;
      } else {
        int e = SSL_get_error(client_, n);
        ASSERT_TRUE(e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) << e;
      }
      if (!moved) {
        pollfd p{.fd = pair_.fd[1],
                 .events = static_cast<short>(POLLIN |
                                              (sent < up.size() ? POLLOUT : 0)),
                 .revents = 0};
        ::poll(&p, 1, 100);
      }
    }
    client_ok = true;
  });
  std::vector<uint8_t> got(up.size());
  using namespace boost::asio::experimental::awaitable_operators;
  ErrorCode ec = Run([&]() -> boost::asio::awaitable<ErrorCode> {
    auto read = [&]() -> boost::asio::awaitable<ErrorCode> {
      std::mt19937 rng(11);
      for (size_t at = 0; at < got.size();) {
        size_t n = std::min<size_t>(got.size() - at,
                                    rng() % 2 ? 28 : 1 + rng() % 300000);
        if (ErrorCode e = co_await conn_->ReadExact({got.data() + at, n}); e) {
          co_return e;
        }
        at += n;
      }
      co_return ErrorCode{};
    };
    auto write = [&]() -> boost::asio::awaitable<ErrorCode> {
      std::vector<boost::asio::const_buffer> iov;
      for (size_t i = 0; i < pieces.size(); ++i) {
        iov.emplace_back(pieces[i].data(), pieces[i].size());
        if (iov.size() == 64 || i + 1 == pieces.size()) {
          if (ErrorCode e = co_await conn_->WriteAll(iov); e) co_return e;
          iov.clear();
        }
      }
      co_return ErrorCode{};
    };
    auto [r, w] = co_await (read() && write());
    co_return r ? r : w;
  });
  client.join();
  ASSERT_FALSE(ec) << ec.message();
  ASSERT_TRUE(client_ok);
  EXPECT_TRUE(got == up);
  EXPECT_TRUE(back == down);
  EXPECT_GT(updates_received, 1);
}

INSTANTIATE_TEST_SUITE_P(Transports, TlsConnectionTest,
                         ::testing::Values(AF_UNIX, AF_INET),
                         [](const auto& info) {
                           return info.param == AF_UNIX ? "Unix" : "Tcp";
                         });

}  // namespace
}  // namespace nbdmgr::nbd
