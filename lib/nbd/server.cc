#include "lib/nbd/server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "lib/util/errors.h"
#include "lib/util/mutex.h"
#include "lib/util/strings.h"
#include "spdlog/spdlog.h"

namespace nbdmgr::nbd {
namespace {

int DefaultIoThreads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

int DefaultBlockingThreads() { return std::max(8, 4 * DefaultIoThreads()); }

}  // namespace

Server::Server(ServerOptions options, std::shared_ptr<ExportRegistry> registry)
    : options_(std::move(options)),
      registry_(std::move(registry)),
      blocking_pool_(options_.blocking_threads > 0 ? options_.blocking_threads
                                                   : DefaultBlockingThreads()) {
  options_.session.transmission.blocking_pool = &blocking_pool_;
  options_.session.server_stats = &stats_;
  options_.session.negotiation.stats = &stats_;

  int n = options_.io_threads > 0 ? options_.io_threads : DefaultIoThreads();
  for (int i = 0; i < n; ++i) {
    // Concurrency hint 1: each context is run by exactly one thread.
    contexts_.push_back(std::make_unique<asio::io_context>(1));
    load_.emplace_back(0);
    guards_.push_back(asio::make_work_guard(*contexts_.back()));
    rings_.push_back(nullptr);
    if (IoRing::Supported()) {
      // Without its ring a thread's sessions use the pool for file I/O.
      absl::StatusOr<std::shared_ptr<IoRing>> ring =
          IoRing::Create(*contexts_.back());
      if (ring.ok()) {
        rings_.back() = std::move(*ring);
      } else {
        spdlog::warn("io thread {}: no io_uring ({}); file exports use threads",
                     i, ring.status().message());
      }
    }
  }
}

absl::StatusOr<std::unique_ptr<Server>> Server::Create(
    ServerOptions options, std::shared_ptr<ExportRegistry> registry) {
  if (options.listen.empty()) {
    return absl::InvalidArgumentError("no NBD listen address");
  }
  std::unique_ptr<Server> server(
      new Server(std::move(options), std::move(registry)));
  for (const ListenAddress& addr : server->options_.listen) {
    if (absl::Status st = server->Listen(addr); !st.ok()) return st;
  }
  return server;
}

absl::Status Server::Listen(const ListenAddress& addr) {
  auto acceptor = std::make_unique<Acceptor>(*contexts_[0]);
  ErrorCode ec;
  asio::generic::stream_protocol::endpoint endpoint;
  ListenAddress bound = addr;
  if (addr.kind == ListenAddress::Kind::kUnix) {
    std::filesystem::path path(addr.path);
    std::error_code fs_ec;
    std::filesystem::create_directories(path.parent_path(), fs_ec);
    absl::StatusOr<SocketPathClaim> claim =
        SocketPathClaim::Claim(addr.path, addr.ToString(), "--nbd-listen");
    if (!claim.ok()) return claim.status();
    socket_claims_.push_back(std::move(*claim));
    endpoint = asio::local::stream_protocol::endpoint(addr.path);
  } else {
    std::string host = addr.host == "localhost" ? "127.0.0.1" : addr.host;
    asio::ip::address ip = asio::ip::make_address(host, ec);
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat(
          addr.ToString(), ": host must be a numeric address or localhost"));
    }
    endpoint = asio::ip::tcp::endpoint(ip, addr.port);
  }
  acceptor->open(endpoint.protocol(), ec);
  if (!ec && addr.kind == ListenAddress::Kind::kTcp) {
    acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  }
  if (!ec) acceptor->bind(endpoint, ec);
  if (!ec && addr.kind == ListenAddress::Kind::kUnix) {
    // Remember which file is ours: Shutdown() removes that one only.
    socket_claims_.back().Bound();
  }
  if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", addr.ToString(), ": ", ec.message()));
  }
  if (addr.kind == ListenAddress::Kind::kTcp) {
    auto local = acceptor->local_endpoint(ec);
    if (!ec) {
      asio::ip::tcp::endpoint tcp_ep;
      std::memcpy(tcp_ep.data(), local.data(), local.size());
      bound.port = tcp_ep.port();
    }
  }
  bound_.push_back(bound);
  acceptors_.push_back(std::move(acceptor));
  return absl::OkStatus();
}

Server::~Server() {
  Shutdown(std::chrono::milliseconds(0));
  if (abandoned() > 0) {
    // The contract says leak it; a destructor cannot. Better to stop here
    // than to free what running threads and late completions still use.
    spdlog::critical("nbd::Server destroyed with abandoned sessions");
    std::abort();
  }
}

size_t Server::NextContext() {
  // The context with the fewest live sessions; ties go round-robin.
  size_t start = next_context_.fetch_add(1, std::memory_order_relaxed);
  size_t best = start % contexts_.size();
  for (size_t k = 1; k < contexts_.size(); ++k) {
    size_t i = (start + k) % contexts_.size();
    if (load_[i].load(std::memory_order_relaxed) <
        load_[best].load(std::memory_order_relaxed)) {
      best = i;
    }
  }
  return best;
}

void Server::Start() {
  if (started_) return;
  started_ = true;
  for (auto& ctx : contexts_) {
    threads_.emplace_back([c = ctx.get()] { c->run(); });
  }
  for (size_t i = 0; i < acceptors_.size(); ++i) {
    Acceptor& acc = *acceptors_[i];
    spdlog::info("listening for NBD on {}", bound_[i].ToString());
    asio::co_spawn(acc.get_executor(), AcceptLoop(acc),
                   [addr = bound_[i].ToString()](std::exception_ptr e) {
                     if (e) spdlog::error("acceptor {} failed", addr);
                   });
  }
}

asio::awaitable<void> Server::AcceptLoop(Acceptor& acceptor) {
  for (;;) {
    size_t ctx = NextContext();
    asio::any_io_executor ex = contexts_[ctx]->get_executor();
    auto [ec, socket] =
        co_await acceptor.async_accept(ex, asio::as_tuple(asio::use_awaitable));
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) {
        co_return;
      }
      spdlog::warn("accept failed: {}", ec.message());
      // Out of descriptors and the like: back off instead of spinning.
      asio::steady_timer t(acceptor.get_executor(),
                           std::chrono::milliseconds(100));
      co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
      continue;
    }
    if (options_.max_connections > 0 &&
        session_count() >= options_.max_connections) {
      ErrorCode ignored;
      auto peer = socket.remote_endpoint(ignored);
      stats_.Refused(
          Refusal::kMaxConnections,
          peer.protocol().family() == AF_UNIX ? "unix" : "tcp client",
          absl::StrCat("already serving ", options_.max_connections,
                       " connections"));
      socket.close(ignored);
      continue;
    }
    SessionOptions so = options_.session;
    so.transmission.ring = rings_[ctx].get();
    auto session = std::make_shared<Session>(std::move(socket), *registry_, so);
    {
      MutexLock lock(&mu_);
      sessions_.emplace(session.get(), session);
    }
    load_[ctx].fetch_add(1, std::memory_order_relaxed);
    asio::co_spawn(session->executor(), session->Run(),
                   [this, session, ctx](std::exception_ptr e) {
                     if (e)
                       spdlog::error("{}: session ended with an exception",
                                     session->peer());
                     load_[ctx].fetch_sub(1, std::memory_order_relaxed);
                     Forget(session.get());
                   });
  }
}

void Server::PostToSessions(std::function<void(Session&)> fn) {
  std::vector<std::shared_ptr<Session>> live;
  {
    MutexLock lock(&mu_);
    for (auto& [p, w] : sessions_) {
      if (auto s = w.lock()) live.push_back(std::move(s));
    }
  }
  for (auto& s : live) asio::post(s->executor(), [s, fn] { fn(*s); });
}

void Server::StopSessionsOf(const Export& e, bool hard) {
  PostToSessions([target = &e, hard](Session& s) {
    if (s.export_in_use() != target) return;
    if (hard) {
      s.Abort();
    } else {
      s.Stop();
    }
  });
}

void Server::Forget(Session* s) {
  MutexLock lock(&mu_);
  sessions_.erase(s);
  sessions_changed_.SignalAll();
}

size_t Server::session_count() const {
  MutexLock lock(&mu_);
  return sessions_.size();
}

void Server::StopWaiting() {
  MutexLock lock(&mu_);
  stop_waiting_ = true;
  sessions_changed_.SignalAll();
}

void Server::Shutdown(std::chrono::milliseconds grace,
                      std::chrono::milliseconds stuck_wait) {
  if (shut_down_) return;
  shut_down_ = true;
  if (started_) {
    for (auto& acc : acceptors_) {
      asio::post(acc->get_executor(), [a = acc.get()] {
        ErrorCode ec;
        a->close(ec);
      });
    }
    // Ask every session to stop reading; repeat for any accepted meanwhile.
    auto deadline = std::chrono::steady_clock::now() + grace;
    auto settled = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return sessions_.empty() || stop_waiting_;
    };
    auto empty = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return sessions_.empty();
    };
    mu_.Lock();
    while (!sessions_.empty() && !stop_waiting_ &&
           std::chrono::steady_clock::now() < deadline) {
      mu_.Unlock();
      PostToSessions([](Session& s) { s.Stop(); });
      mu_.Lock();
      sessions_changed_.WaitFor(&mu_, std::chrono::milliseconds(100), settled);
    }
    if (!sessions_.empty()) {
      spdlog::warn("{} session(s) still busy {}; closing", sessions_.size(),
                   stop_waiting_ ? "when told to stop at once"
                                 : "after the drain deadline");
      mu_.Unlock();
      PostToSessions([](Session& s) { s.Abort(); });
      mu_.Lock();
      sessions_changed_.WaitFor(&mu_, stuck_wait, empty);
    }
    if (!sessions_.empty()) {
      // Closed, yet still waiting for a backend call that may never come
      // back (a storage system that stopped answering). Their frames,
      // threads and contexts must stay: abandoned, never destroyed.
      abandoned_.store(sessions_.size(), std::memory_order_relaxed);
      spdlog::error(
          "{} session(s) still wait on their export's backend, which does "
          "not answer; abandoning them",
          sessions_.size());
      mu_.Unlock();
      for (const SocketPathClaim& c : socket_claims_) c.RemoveIfStillOurs();
      return;
    }
    mu_.Unlock();
  }
  // Sessions still waiting on the pool need it to finish before the
  // contexts stop.
  blocking_pool_.join();
  guards_.clear();
  for (auto& ctx : contexts_) ctx->stop();
  for (auto& t : threads_) t.join();
  threads_.clear();
  // Before their contexts: a ring waits for what it has in flight.
  rings_.clear();
  // Only the files still ours: never another daemon's.
  for (const SocketPathClaim& c : socket_claims_) c.RemoveIfStillOurs();
}

}  // namespace nbdmgr::nbd
