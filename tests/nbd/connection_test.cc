// Connection moves whole gather lists and exact reads through sockets that
// only take part of them per system call: a small send buffer forces
// partial writes mid-piece, a peer that writes in odd chunks forces short
// reads. Every byte must arrive once and in order, over a Unix socketpair
// and over TCP loopback.

#include "lib/nbd/connection.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

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

}  // namespace
}  // namespace nbdmgr::nbd
