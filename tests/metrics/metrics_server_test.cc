#include "lib/metrics/metrics_server.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace nbdmgr {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// One answer as a client sees it.
struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> fields;  // names in lower case
  std::string body;
};

// A blocking TCP client with a 5 s receive timeout.
class Client {
 public:
  explicit Client(uint16_t port, int rcvbuf = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (rcvbuf > 0) {
      ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    }
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ =
        ::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0;
  }
  ~Client() { ::close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }

  bool Send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(n);
    }
    return true;
  }

  // The next answer; status 0 if the connection ended first. `head_only`:
  // the answer to a HEAD, whose Content-Length has no body behind it.
  HttpResponse Read(bool head_only = false) {
    HttpResponse r;
    size_t end;
    while ((end = in_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill()) return r;
    }
    std::string head = in_.substr(0, end);
    in_.erase(0, end + 4);
    size_t eol = head.find("\r\n");
    std::string status_line = head.substr(0, eol);
    if (!status_line.starts_with("HTTP/1.1 ") ||
        !absl::SimpleAtoi(status_line.substr(9, 3), &r.status)) {
      r.status = -1;
      return r;
    }
    while (eol != std::string::npos) {
      size_t next = head.find("\r\n", eol + 2);
      std::string field = head.substr(eol + 2, next - eol - 2);
      size_t colon = field.find(':');
      r.fields[absl::AsciiStrToLower(field.substr(0, colon))] =
          std::string(absl::StripAsciiWhitespace(field.substr(colon + 1)));
      eol = next;
    }
    size_t length = 0;
    if (!head_only && absl::SimpleAtoi(r.fields["content-length"], &length)) {
      while (in_.size() < length) {
        if (!Fill()) break;
      }
      r.body = in_.substr(0, length);
      in_.erase(0, r.body.size());
    }
    return r;
  }

  // Whether something arrives within `timeout` (left unread).
  bool ReadableWithin(milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
  }

  // Whether the server ended the connection (end of stream or reset)
  // within `timeout`, discarding anything it still sent.
  bool ClosedWithin(milliseconds timeout) {
    Clock::time_point deadline = Clock::now() + timeout;
    for (;;) {
      auto left =
          std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 0))) ==
          0) {
        return false;
      }
      char buf[4096];
      ssize_t n = ::recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
      if (n <= 0) return true;
    }
  }

 private:
  bool Fill() {
    char buf[65536];
    ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    if (n <= 0) return false;
    in_.append(buf, n);
    return true;
  }

  int fd_ = -1;
  bool connected_ = false;
  std::string in_;
};

constexpr char kGet[] = "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n";

class MetricsServerTest : public ::testing::Test {
 protected:
  void Start(MetricsServerOptions options = {}) {
    absl::StatusOr<std::unique_ptr<MetricsServer>> s = MetricsServer::Start(
        "127.0.0.1:0",
        [this] {
          ++scrapes_;
          return snapshot_;
        },
        options);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    std::string bound = server_->bound();
    ASSERT_THAT(bound, StartsWith("127.0.0.1:"));
    uint32_t port = 0;
    ASSERT_TRUE(absl::SimpleAtoi(bound.substr(10), &port)) << bound;
    ASSERT_NE(port, 0u);
    port_ = static_cast<uint16_t>(port);
  }

  void SetUp() override { snapshot_.daemon.version = "9.9.9"; }

  StatsSnapshot snapshot_;  // set before Start()
  std::atomic<int> scrapes_{0};
  std::unique_ptr<MetricsServer> server_;
  uint16_t port_ = 0;
};

TEST_F(MetricsServerTest, GetAnswersTheExposition) {
  Start();
  Client c(port_);
  ASSERT_TRUE(c.Send(kGet));
  HttpResponse r = c.Read();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.fields["content-type"],
            "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(r.fields["content-length"], absl::StrCat(r.body.size()));
  EXPECT_THAT(r.body, HasSubstr("nbdmgr_build_info{version=\"9.9.9\"} 1"));
  EXPECT_EQ(scrapes_, 1);
}

TEST_F(MetricsServerTest, QueryStringIsIgnored) {
  Start();
  Client c(port_);
  ASSERT_TRUE(c.Send("GET /metrics?name[]=up HTTP/1.1\r\n\r\n"));
  EXPECT_EQ(c.Read().status, 200);
}

TEST_F(MetricsServerTest, HeadHasTheLengthButNoBody) {
  Start();
  Client c(port_);
  ASSERT_TRUE(c.Send("HEAD /metrics HTTP/1.1\r\n\r\n"));
  HttpResponse head = c.Read(/*head_only=*/true);
  EXPECT_EQ(head.status, 200);
  size_t length = 0;
  ASSERT_TRUE(absl::SimpleAtoi(head.fields["content-length"], &length));
  EXPECT_GT(length, 0u);
  // Had a body followed, this would read it as the next answer.
  ASSERT_TRUE(c.Send(kGet));
  HttpResponse get = c.Read();
  EXPECT_EQ(get.status, 200);
  EXPECT_EQ(get.body.size(), length);
}

TEST_F(MetricsServerTest, OtherPathIs404AndKeepsTheConnection) {
  Start();
  Client c(port_);
  ASSERT_TRUE(c.Send("GET / HTTP/1.1\r\n\r\nGET /metricsx HTTP/1.1\r\n\r\n"));
  EXPECT_EQ(c.Read().status, 404);
  EXPECT_EQ(c.Read().status, 404);
  ASSERT_TRUE(c.Send(kGet));
  EXPECT_EQ(c.Read().status, 200);
  EXPECT_EQ(scrapes_, 1);
}

TEST_F(MetricsServerTest, OtherMethodIs405) {
  Start();
  Client c(port_);
  ASSERT_TRUE(c.Send("DELETE /metrics HTTP/1.1\r\n\r\n"));
  HttpResponse r = c.Read();
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.fields["allow"], "GET, HEAD");
  ASSERT_TRUE(c.Send(kGet));
  EXPECT_EQ(c.Read().status, 200);
}

TEST_F(MetricsServerTest, RequestWithABodyIsAnsweredThenClosed) {
  Start();
  Client c(port_);
  ASSERT_TRUE(c.Send("POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"));
  HttpResponse r = c.Read();
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.fields["connection"], "close");
  EXPECT_TRUE(c.ClosedWithin(milliseconds(5000)));
}

TEST_F(MetricsServerTest, KeepAliveServesPipelinedRequests) {
  Start();
  Client c(port_);
  ASSERT_TRUE(c.Send(absl::StrCat(kGet, kGet, kGet)));
  for (int i = 0; i < 3; ++i) {
    HttpResponse r = c.Read();
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.fields.count("connection"), 0u);
  }
  EXPECT_EQ(scrapes_, 3);
}

TEST_F(MetricsServerTest, ConnectionCloseIsHonoured) {
  Start();
  Client c(port_);
  ASSERT_TRUE(c.Send("GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n"));
  HttpResponse r = c.Read();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.fields["connection"], "close");
  EXPECT_TRUE(c.ClosedWithin(milliseconds(5000)));
}

TEST_F(MetricsServerTest, Http10ClosesUnlessAskedToKeepAlive) {
  Start();
  Client keep(port_);
  ASSERT_TRUE(
      keep.Send("GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  HttpResponse r = keep.Read();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.fields["connection"], "keep-alive");
  ASSERT_TRUE(keep.Send("GET /metrics HTTP/1.0\r\n\r\n"));
  r = keep.Read();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.fields["connection"], "close");
  EXPECT_TRUE(keep.ClosedWithin(milliseconds(5000)));
}

TEST_F(MetricsServerTest, MalformedRequestIs400AndClosed) {
  Start();
  Client c(port_);
  ASSERT_TRUE(c.Send("GET /metrics\r\n\r\n"));
  EXPECT_EQ(c.Read().status, 400);
  EXPECT_TRUE(c.ClosedWithin(milliseconds(5000)));
  Client v(port_);
  ASSERT_TRUE(v.Send("GET /metrics HTTP/2.0\r\n\r\n"));
  EXPECT_EQ(v.Read().status, 505);
}

TEST_F(MetricsServerTest, OversizedHeadIs431AndClosed) {
  Start();
  Client c(port_);
  std::string head = absl::StrCat(
      "GET /metrics HTTP/1.1\r\nX-Pad: ", std::string(9000, 'x'), "\r\n\r\n");
  ASSERT_TRUE(c.Send(head));
  EXPECT_EQ(c.Read().status, 431);
  EXPECT_TRUE(c.ClosedWithin(milliseconds(5000)));
  EXPECT_EQ(scrapes_, 0);

  // Just under the limit is served.
  Client ok(port_);
  std::string pad(8192 - 64, 'x');
  ASSERT_TRUE(ok.Send(
      absl::StrCat("GET /metrics HTTP/1.1\r\nX-Pad: ", pad, "\r\n\r\n")));
  EXPECT_EQ(ok.Read().status, 200);
}

TEST_F(MetricsServerTest, UnfinishedHeadIsClosedAtTheHeaderDeadline) {
  Start({.header_timeout = milliseconds(300)});
  Client c(port_);
  Clock::time_point start = Clock::now();
  ASSERT_TRUE(c.Send("GET /metr"));
  // Trickling bytes does not move the deadline.
  for (char ch : std::string("ics")) {
    std::this_thread::sleep_for(milliseconds(50));
    ASSERT_TRUE(c.Send(std::string(1, ch)));
  }
  EXPECT_TRUE(c.ClosedWithin(milliseconds(5000)));
  EXPECT_GE(Clock::now() - start, milliseconds(250));
  EXPECT_EQ(scrapes_, 0);
}

TEST_F(MetricsServerTest, IdleKeptAliveConnectionIsClosedAtTheHeaderDeadline) {
  Start({.header_timeout = milliseconds(300)});
  Client c(port_);
  ASSERT_TRUE(c.Send(kGet));
  EXPECT_EQ(c.Read().status, 200);
  Clock::time_point answered = Clock::now();
  EXPECT_TRUE(c.ClosedWithin(milliseconds(5000)));
  EXPECT_GE(Clock::now() - answered, milliseconds(250));
}

TEST_F(MetricsServerTest, FullTableClosesTheConnectionWaitingLongest) {
  Start({.max_connections = 4});
  std::vector<std::unique_ptr<Client>> slow;
  for (int i = 0; i < 4; ++i) {
    slow.push_back(std::make_unique<Client>(port_));
    ASSERT_TRUE(slow.back()->Send("GET /metr"));
    std::this_thread::sleep_for(milliseconds(20));
  }
  Client scraper(port_);
  ASSERT_TRUE(scraper.Send(kGet));
  EXPECT_EQ(scraper.Read().status, 200);
  EXPECT_TRUE(slow[0]->ClosedWithin(milliseconds(5000)));
  for (int i = 1; i < 4; ++i) {
    EXPECT_FALSE(slow[i]->ClosedWithin(milliseconds(50))) << i;
  }
  // The scraper, kept alive, waits for its next request now: the next
  // newcomer closes the slow client that has waited longest, not it.
  Client another(port_);
  ASSERT_TRUE(another.Send(kGet));
  EXPECT_EQ(another.Read().status, 200);
  EXPECT_TRUE(slow[1]->ClosedWithin(milliseconds(5000)));
  ASSERT_TRUE(scraper.Send(kGet));
  EXPECT_EQ(scraper.Read().status, 200);
}

TEST_F(MetricsServerTest, ScrapesSucceedWhileManyClientsStall) {
  Start();
  std::vector<std::unique_ptr<Client>> slow;
  for (int i = 0; i < 300; ++i) {
    slow.push_back(std::make_unique<Client>(port_));
    ASSERT_TRUE(slow.back()->connected());
    ASSERT_TRUE(slow.back()->Send("GET /metr"));
  }
  for (int i = 0; i < 5; ++i) {
    Client c(port_);
    ASSERT_TRUE(c.Send(kGet));
    HttpResponse r = c.Read();
    EXPECT_EQ(r.status, 200);
    EXPECT_THAT(r.body, HasSubstr("nbdmgr_build_info"));
  }
  for (auto& s : slow) EXPECT_FALSE(s->ClosedWithin(milliseconds(0)));
}

TEST_F(MetricsServerTest, ClientThatDoesNotReadIsClosedAtTheWriteDeadline) {
  // An answer far larger than the socket buffers can hold.
  ExportStats e;
  e.name = std::string(100'000, 'e');
  e.backend = "memory";
  snapshot_.exports.push_back(e);
  e.name.back() = 'f';
  snapshot_.exports.push_back(e);
  Start({.write_timeout = milliseconds(300)});
  Client c(port_, /*rcvbuf=*/4096);
  ASSERT_TRUE(c.Send(kGet));
  // The deadline runs from the first write, not while the answer is made
  // (seconds under TSan): wait for it to start, then stop reading.
  ASSERT_TRUE(c.ReadableWithin(milliseconds(60'000)));
  std::this_thread::sleep_for(milliseconds(1500));
  // The server gave up: what arrives ends before the announced length.
  HttpResponse r = c.Read();
  EXPECT_EQ(r.status, 200);
  size_t length = 0;
  ASSERT_TRUE(absl::SimpleAtoi(r.fields["content-length"], &length));
  EXPECT_GT(length, size_t{16} << 20);
  EXPECT_LT(r.body.size(), length);
  EXPECT_TRUE(c.ClosedWithin(milliseconds(0)));  // not a receive timeout
}

TEST_F(MetricsServerTest, DestructionClosesOpenConnections) {
  Start();
  std::vector<std::unique_ptr<Client>> slow;
  for (int i = 0; i < 10; ++i) {
    slow.push_back(std::make_unique<Client>(port_));
    ASSERT_TRUE(slow.back()->Send("GET /metr"));
  }
  Client idle(port_);
  ASSERT_TRUE(idle.Send(kGet));
  EXPECT_EQ(idle.Read().status, 200);
  Clock::time_point start = Clock::now();
  server_.reset();
  EXPECT_LT(Clock::now() - start, milliseconds(2000));
  for (auto& s : slow) EXPECT_TRUE(s->ClosedWithin(milliseconds(1000)));
  EXPECT_TRUE(idle.ClosedWithin(milliseconds(1000)));
}

TEST(MetricsServerStartTest, BindFailureIsUnavailableNamingTheAddress) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof(sa);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  std::string address = absl::StrCat("127.0.0.1:", ntohs(sa.sin_port));
  absl::StatusOr<std::unique_ptr<MetricsServer>> s =
      MetricsServer::Start(address, [] { return StatsSnapshot(); });
  ::close(fd);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr(absl::StrCat("metrics listener ", address)));
}

TEST(MetricsServerStartTest, NotHostPortIsInvalidArgument) {
  for (const char* address :
       {"nowhere", "127.0.0.1:http", ":9810", "127.0.0.1:70000"}) {
    EXPECT_EQ(MetricsServer::Start(address, [] { return StatsSnapshot(); })
                  .status()
                  .code(),
              absl::StatusCode::kInvalidArgument)
        << address;
  }
}

TEST(MetricsServerStartTest, NamesAndIpv6AreBound) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> s =
      MetricsServer::Start("localhost:0", [] { return StatsSnapshot(); });
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_THAT((*s)->bound(), StartsWith("localhost:"));
  EXPECT_NE((*s)->bound(), "localhost:0");

  s = MetricsServer::Start("[::1]:0", [] { return StatsSnapshot(); });
  if (!s.ok()) GTEST_SKIP() << "no IPv6 loopback: " << s.status();
  EXPECT_THAT((*s)->bound(), StartsWith("[::1]:"));
  EXPECT_NE((*s)->bound(), "[::1]:0");
}

}  // namespace
}  // namespace nbdmgr
