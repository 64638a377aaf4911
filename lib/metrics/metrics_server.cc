#include "lib/metrics/metrics_server.h"

#include <pthread.h>

#include <algorithm>
#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <list>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/metrics/exposition.h"
#include "lib/metrics/http_request.h"
#include "lib/util/listen_address.h"
#include "spdlog/spdlog.h"

// One io_context run by one thread serves every connection. Each connection
// is two coroutines: Serve() reads a request head, answers it and repeats
// (keep-alive), and Watchdog() closes the socket when the connection's timer
// passes its expiry. Serve() moves that expiry at each phase: header_timeout
// to read a head, write_timeout to write the answer, a short linger after
// the last answer. Closing the socket ends Serve()'s pending operation, so a
// stalled client holds a descriptor and a few hundred bytes, never a thread.
//
// The connection table (all_, evictable_) is only touched on that thread.
// evictable_ lists the connections waiting for a request head (or lingering
// after their last answer) in the order they started waiting; when the table
// is full, its front is the one closed to make room.

namespace nbdmgr {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using ErrorCode = boost::system::error_code;
using Clock = std::chrono::steady_clock;
constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

constexpr char kExpositionType[] = "text/plain; version=0.0.4; charset=utf-8";
constexpr char kPlainType[] = "text/plain; charset=utf-8";
constexpr size_t kReadChunk = 4096;
// After its last answer a client gets this long (at most) to hang up, and
// what it still sends meanwhile is read and dropped: closing with unread
// input would reset the connection and could discard the answer.
constexpr std::chrono::milliseconds kLinger{1000};
constexpr size_t kLingerBytes = 64 << 10;

struct Response {
  std::string head;
  std::string body;
  bool keep_alive = false;
};

// `minor_version` is the request's: an HTTP/1.0 client needs an explicit
// keep-alive, an HTTP/1.1 one an explicit close.
Response MakeResponse(int status, const char* reason, const char* type,
                      std::string body, bool keep_alive, int minor_version,
                      const char* extra_fields = "") {
  const char* connection = !keep_alive          ? "Connection: close\r\n"
                           : minor_version == 0 ? "Connection: keep-alive\r\n"
                                                : "";
  Response r;
  r.head =
      absl::StrCat("HTTP/1.1 ", status, " ", reason, "\r\nContent-Type: ", type,
                   "\r\nContent-Length: ", body.size(), "\r\n", extra_fields,
                   connection, "\r\n");
  r.body = std::move(body);
  r.keep_alive = keep_alive;
  return r;
}

Response Failure(int status, const char* reason) {
  return MakeResponse(status, reason, kPlainType, absl::StrCat(reason, "\n"),
                      /*keep_alive=*/false, /*minor_version=*/1);
}

}  // namespace

class MetricsServer::Impl {
 public:
  Impl(std::function<StatsSnapshot()> collect, MetricsServerOptions options)
      : collect_(std::move(collect)), options_(options) {}
  // Stops serving and joins the thread (see ~MetricsServer).
  ~Impl();

  // Binds `address` (before Run()). Returns the port bound; errors as
  // MetricsServer::Start's.
  absl::StatusOr<uint16_t> Listen(const std::string& address);
  // Starts accepting, on a new thread.
  void Run();

 private:
  struct Connection {
    explicit Connection(tcp::socket s)
        : socket(std::move(s)), deadline(socket.get_executor()) {}
    tcp::socket socket;
    asio::steady_timer deadline;  // Watchdog() closes the socket at expiry
    bool closed = false;
    std::list<Connection*>::iterator in_all;
    bool evictable = false;
    std::list<Connection*>::iterator in_evictable;
  };

  asio::awaitable<void> AcceptLoop();
  asio::awaitable<void> Serve(std::shared_ptr<Connection> c);
  asio::awaitable<void> Watchdog(std::shared_ptr<Connection> c);
  asio::awaitable<void> Linger(Connection& c);
  Response Answer(const absl::StatusOr<HttpRequest>& request);
  void SetEvictable(Connection& c, bool evictable);
  // Closes the socket and drops `c` from the table; idempotent.
  void Close(Connection& c);

  std::function<StatsSnapshot()> collect_;
  const MetricsServerOptions options_;
  asio::io_context io_{1};
  tcp::acceptor acceptor_{io_};
  std::thread thread_;
  // Only touched on thread_.
  std::list<Connection*> all_;        // in accept order
  std::list<Connection*> evictable_;  // in the order they started waiting
  uint64_t evicted_ = 0;
  // Every read lands here first (what Linger() reads is dropped).
  std::array<char, kReadChunk> read_buffer_;
};

MetricsServer::Impl::~Impl() {
  if (!thread_.joinable()) return;
  asio::post(io_, [this] {
    ErrorCode ignored;
    acceptor_.close(ignored);
    while (!all_.empty()) Close(*all_.front());
  });
  // With the acceptor and every socket closed, each coroutine ends and run()
  // returns.
  thread_.join();
}

absl::StatusOr<uint16_t> MetricsServer::Impl::Listen(
    const std::string& address) {
  absl::StatusOr<ListenAddress> addr =
      ParseListenAddress(absl::StrCat("tcp:", address));
  if (!addr.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics listener ", address, ": expected HOST:PORT"));
  }
  auto fail = [&](const std::string& why) {
    return absl::UnavailableError(absl::StrCat("metrics listener ", address,
                                               ": cannot listen (", why, ")"));
  };
  ErrorCode ec;
  tcp::resolver resolver(io_);
  tcp::resolver::results_type endpoints = resolver.resolve(
      addr->host, std::to_string(addr->port),
      tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec) return fail(ec.message());
  if (endpoints.empty()) return fail("no address");
  // The first address that can be bound (localhost: 127.0.0.1, else ::1).
  for (const tcp::resolver::results_type::value_type& entry : endpoints) {
    tcp::acceptor acceptor(io_);
    acceptor.open(entry.endpoint().protocol(), ec);
    if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor.bind(entry.endpoint(), ec);
    if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) continue;
    tcp::endpoint local = acceptor.local_endpoint(ec);
    if (ec) continue;
    acceptor_ = std::move(acceptor);
    return local.port();
  }
  return fail(ec.message());
}

void MetricsServer::Impl::Run() {
  asio::co_spawn(io_, AcceptLoop(), [](std::exception_ptr e) {
    if (e) spdlog::error("metrics: acceptor ended with an exception");
  });
  thread_ = std::thread([this] { io_.run(); });
  pthread_setname_np(thread_.native_handle(), "nbdmgr-metrics");
}

asio::awaitable<void> MetricsServer::Impl::AcceptLoop() {
  for (;;) {
    auto [ec, socket] = co_await acceptor_.async_accept(kUseTuple);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) {
        co_return;
      }
      spdlog::warn("metrics: accept failed: {}", ec.message());
      // Out of descriptors, say: give one back if a connection is only
      // waiting, and back off instead of spinning.
      if (!evictable_.empty()) Close(*evictable_.front());
      asio::steady_timer backoff(io_, std::chrono::milliseconds(100));
      co_await backoff.async_wait(kUseTuple);
      continue;
    }
    if (options_.max_connections > 0 &&
        all_.size() >= options_.max_connections) {
      Connection* victim =
          evictable_.empty() ? all_.front() : evictable_.front();
      if (evicted_++ % 1024 == 0) {
        spdlog::warn(
            "metrics: {} HTTP connections open, closing the one waiting "
            "longest ({} closed so far)",
            all_.size(), evicted_);
      }
      Close(*victim);
    }
    ErrorCode ignored;
    socket.non_blocking(true, ignored);  // Serve() reads when it is readable
    auto c = std::make_shared<Connection>(std::move(socket));
    c->in_all = all_.insert(all_.end(), c.get());
    c->deadline.expires_after(options_.header_timeout);
    asio::co_spawn(io_, Serve(c), [this, c](std::exception_ptr e) {
      if (e) spdlog::error("metrics: connection ended with an exception");
      Close(*c);
    });
    asio::co_spawn(io_, Watchdog(c), [](std::exception_ptr e) {
      if (e) spdlog::error("metrics: watchdog ended with an exception");
    });
  }
}

asio::awaitable<void> MetricsServer::Impl::Serve(
    std::shared_ptr<Connection> c) {
  std::string in;  // read and not yet answered
  for (;;) {
    SetEvictable(*c, true);
    c->deadline.expires_after(options_.header_timeout);
    size_t head_length = HttpHeadLength(in);
    while (head_length == 0 && in.size() <= options_.max_header_bytes) {
      // Wait, then read into the shared buffer: an idle client holds none.
      auto [wait_ec] =
          co_await c->socket.async_wait(tcp::socket::wait_read, kUseTuple);
      if (wait_ec) co_return;
      ErrorCode ec;
      size_t n = c->socket.read_some(
          asio::buffer(read_buffer_.data(),
                       std::min(read_buffer_.size(),
                                options_.max_header_bytes + 1 - in.size())),
          ec);
      if (ec == asio::error::would_block) continue;
      if (ec) co_return;  // end of stream, reset, or closed by us
      size_t searched = in.size();
      in.append(read_buffer_.data(), n);
      head_length = HttpHeadLength(in, searched);
    }
    SetEvictable(*c, false);

    Response r;
    if (head_length == 0 || head_length > options_.max_header_bytes) {
      r = Failure(431, "Request Header Fields Too Large");
    } else {
      r = Answer(
          ParseHttpRequestHead(std::string_view(in).substr(0, head_length)));
      in.erase(0, head_length);
    }
    c->deadline.expires_after(options_.write_timeout);
    std::array<asio::const_buffer, 2> out{asio::buffer(r.head),
                                          asio::buffer(r.body)};
    auto [ec, n] = co_await asio::async_write(c->socket, out, kUseTuple);
    if (ec) co_return;
    if (!r.keep_alive) break;
  }
  co_await Linger(*c);
}

asio::awaitable<void> MetricsServer::Impl::Linger(Connection& c) {
  ErrorCode ignored;
  c.socket.shutdown(tcp::socket::shutdown_send, ignored);
  SetEvictable(c, true);
  c.deadline.expires_after(std::min(kLinger, options_.header_timeout));
  for (size_t dropped = 0; dropped < kLingerBytes;) {
    auto [ec, n] = co_await c.socket.async_read_some(asio::buffer(read_buffer_),
                                                     kUseTuple);
    if (ec) break;
    dropped += n;
  }
}

asio::awaitable<void> MetricsServer::Impl::Watchdog(
    std::shared_ptr<Connection> c) {
  // Moving the expiry cancels the wait; the loop then waits for the new one.
  while (!c->closed) {
    co_await c->deadline.async_wait(kUseTuple);
    if (!c->closed && c->deadline.expiry() <= Clock::now()) Close(*c);
  }
}

Response MetricsServer::Impl::Answer(
    const absl::StatusOr<HttpRequest>& request) {
  if (!request.ok()) {
    return request.status().code() == absl::StatusCode::kUnimplemented
               ? Failure(505, "HTTP Version Not Supported")
               : Failure(400, "Bad Request");
  }
  // A body is never read, so it would be taken for the next request.
  bool keep_alive = request->keep_alive && !request->has_body;
  int minor = request->minor_version;
  if (request->path != "/metrics") {
    return MakeResponse(404, "Not Found", kPlainType,
                        "Not Found: metrics are at /metrics\n", keep_alive,
                        minor);
  }
  bool head = request->method == "HEAD";
  if (!head && request->method != "GET") {
    return MakeResponse(405, "Method Not Allowed", kPlainType,
                        "Method Not Allowed\n", keep_alive, minor,
                        "Allow: GET, HEAD\r\n");
  }
  Response r = MakeResponse(200, "OK", kExpositionType,
                            ToPrometheusText(collect_()), keep_alive, minor);
  if (head) r.body.clear();  // the head keeps the body's Content-Length
  return r;
}

void MetricsServer::Impl::SetEvictable(Connection& c, bool evictable) {
  if (c.closed || c.evictable == evictable) return;
  if (evictable) {
    c.in_evictable = evictable_.insert(evictable_.end(), &c);
  } else {
    evictable_.erase(c.in_evictable);
  }
  c.evictable = evictable;
}

void MetricsServer::Impl::Close(Connection& c) {
  if (c.closed) return;
  SetEvictable(c, false);
  all_.erase(c.in_all);
  c.closed = true;
  ErrorCode ignored;
  c.socket.close(ignored);
  c.deadline.cancel();
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& address, std::function<StatsSnapshot()> collect,
    MetricsServerOptions options) {
  std::unique_ptr<MetricsServer> s(new MetricsServer());
  s->impl_ = std::make_unique<Impl>(std::move(collect), options);
  absl::StatusOr<uint16_t> port = s->impl_->Listen(address);
  if (!port.ok()) return port.status();
  s->bound_ = absl::StrCat(address.substr(0, address.rfind(':')), ":", *port);
  s->impl_->Run();
  return s;
}

MetricsServer::~MetricsServer() = default;

}  // namespace nbdmgr
