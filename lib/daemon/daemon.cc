#include "lib/daemon/daemon.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/thread_pool.hpp>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "lib/backend/overlay_backend.h"
#include "lib/daemon/notify.h"
#include "lib/metrics/process_stats.h"
#include "lib/tls/tls_engine.h"
#include "lib/util/duration.h"
#include "lib/util/errors.h"
#include "lib/util/heap_trim.h"
#include "lib/util/size.h"
#include "lib/util/strings.h"
#include "spdlog/spdlog.h"

namespace nbdmgr {
namespace {

// How long the teardown may take beyond the drain deadline before the
// shutdown watchdog gives up on it: the last flushes and closing the
// exports (writing back a file's dirty pages, releasing rbd locks).
constexpr std::chrono::seconds kShutdownGrace{30};
// What sessions closed at the drain deadline (or by a second signal) get
// to end before they are abandoned: a write waiting out an OSD failover
// may still finish.
constexpr std::chrono::seconds kStuckWait{15};
// Exports flushed at once at shutdown.
constexpr size_t kMaxFlushThreads = 8;

// Lets the export manager reach the NBD server's sessions.
class ServerSessionControl final : public SessionControl {
 public:
  explicit ServerSessionControl(nbd::Server& server) : server_(server) {}
  void StopSessionsOf(const Export& e, bool hard) override {
    server_.StopSessionsOf(e, hard);
  }

 private:
  nbd::Server& server_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Create(DaemonConfig config) {
  auto buffers = std::make_unique<BufferSystem>(
      BlockSizes{}.maximum_payload, config.memory_cap_bytes,
      config.connection_share_percent, config.connection_memory_bytes);
  auto registry = std::make_shared<ExportRegistry>();
  for (const ExportConfig& ec : config.exports) {
    // An overlay's base export comes earlier on the command line.
    BackendOpenOptions open;
    open.find_export = [&registry](const std::string& name) {
      return registry->Find(name);
    };
    absl::StatusOr<std::shared_ptr<Export>> e =
        Export::Create(ec, *buffers, open);
    if (!e.ok()) {
      return absl::Status(
          e.status().code(),
          absl::StrCat("export \"", ec.name, "\": ", e.status().message()));
    }
    if (absl::Status st = registry->Add(*e); !st.ok()) return st;
  }
  registry->SetDefault(config.default_export);

  std::unique_ptr<Daemon> d(
      new Daemon(std::move(config), std::move(buffers), std::move(registry)));
  const DaemonConfig& cfg = d->config_;
  absl::StatusOr<std::unique_ptr<ExportManager>> manager =
      ExportManager::Create(
          ExportManagerOptions{cfg.state_dir, cfg.allow_paths, !cfg.tls.empty(),
                               cfg.max_exports, cfg.open_timeout,
                               cfg.qos_groups},
          *d->registry_, *d->buffers_);
  if (!manager.ok()) return manager.status();
  d->manager_ = std::move(*manager);

  nbd::ServerOptions so;
  if (!cfg.tls.empty()) {
    absl::StatusOr<std::shared_ptr<TlsContext>> tls =
        TlsContext::Create(cfg.tls);
    if (!tls.ok()) return tls.status();
    so.session.negotiation.tls = *tls;
  }
  so.session.handshake_timeout = cfg.handshake_timeout;
  so.session.idle_timeout = cfg.idle_timeout;
  so.session.stall_timeout = cfg.stall_timeout;
  so.max_connections = cfg.max_connections;
  so.listen = cfg.nbd_listen;
  so.io_threads = cfg.io_threads;
  so.blocking_threads = cfg.blocking_threads;
  so.session.count_requests = cfg.request_stats;
  absl::StatusOr<std::unique_ptr<nbd::Server>> server =
      nbd::Server::Create(so, d->registry_);
  if (!server.ok()) return server.status();
  d->server_ = std::move(*server);
  d->session_control_ = std::make_unique<ServerSessionControl>(*d->server_);
  d->manager_->set_session_control(d->session_control_.get());
  if (absl::Status st = d->StartControl(); !st.ok()) return st;
  if (!cfg.metrics_listen.empty()) {
    Daemon* self = d.get();
    absl::StatusOr<std::unique_ptr<MetricsServer>> metrics =
        MetricsServer::Start(cfg.metrics_listen,
                             [self] { return self->CollectStats(); });
    if (!metrics.ok()) return metrics.status();
    d->metrics_ = std::move(*metrics);
  }
  return d;
}

Daemon::Daemon(DaemonConfig config, std::unique_ptr<BufferSystem> buffers,
               std::shared_ptr<ExportRegistry> registry)
    : config_(std::move(config)),
      buffers_(std::move(buffers)),
      registry_(std::move(registry)) {}

absl::Status Daemon::StartControl() {
  if (!config_.control_listen) return absl::OkStatus();
  export_service_ = std::make_unique<ExportServiceImpl>(*manager_);
  bitmap_service_ = std::make_unique<BitmapServiceImpl>(*manager_);
  overlay_service_ = std::make_unique<OverlayServiceImpl>(*manager_);
  qos_service_ = std::make_unique<QosServiceImpl>(*manager_);
  daemon_service_ = std::make_unique<DaemonServiceImpl>(
      [this] { return Snapshot(); },
      [this](uint64_t cap) {
        buffers_->set_memory_cap(cap);
        spdlog::info("daemon memory cap set to {}",
                     cap ? FormatSize(cap) : "none");
      });
  stats_service_ =
      std::make_unique<StatsServiceImpl>([this] { return CollectStats(); });
  ControlServerOptions o;
  o.listen = *config_.control_listen;
  o.tls_cert_file = config_.control_tls_cert;
  o.tls_key_file = config_.control_tls_key;
  o.tls_client_ca_file = config_.control_tls_ca;
  o.insecure = config_.control_insecure;
  absl::StatusOr<std::unique_ptr<ControlServer>> control = ControlServer::Start(
      o, {export_service_.get(), bitmap_service_.get(), overlay_service_.get(),
          qos_service_.get(), daemon_service_.get(), stats_service_.get()});
  if (!control.ok()) return control.status();
  control_ = std::move(*control);
  return absl::OkStatus();
}

std::optional<ListenAddress> Daemon::control_address() const {
  if (control_ == nullptr) return std::nullopt;
  return control_->bound();
}

DaemonSnapshot Daemon::Snapshot() const {
  DaemonSnapshot s;
  for (const ListenAddress& a : server_->bound())
    s.nbd_listen.push_back(a.ToString());
  if (control_) s.control_listen = control_->bound().ToString();
  MemoryBudgetStats b = buffers_->budget().stats();
  s.memory_cap_bytes = b.cap;
  s.buffer_bytes_in_use = b.used;
  s.buffer_bytes_cached = buffers_->pool().stats().bytes_cached;
  s.uptime = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - started_);
  for (const auto& e : registry_->List()) {
    ++s.exports;
    s.clients += static_cast<uint32_t>(e->clients());
  }
  return s;
}

StatsSnapshot Daemon::CollectStats() const {
  StatsSnapshot s;
  s.time_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  DaemonStats& d = s.daemon;
  d.version = NBDMGR_VERSION;
  d.server = server_->stats().Snapshot();
  MemoryBudgetStats b = buffers_->budget().stats();
  d.buffers.bytes_in_use = b.used;
  d.buffers.bytes_cached = buffers_->pool().stats().bytes_cached;
  d.buffers.cap_bytes = b.cap;
  d.buffers.cap_full = b.refused;
  d.buffers.reserve_bytes = buffers_->reserve_in_use();
  d.buffers.tls_bytes = TlsEngine::LiveBufferBytes();
  ProcessStats p = ReadProcessStats();
  d.resident_memory_bytes = p.resident_memory_bytes;
  d.open_fds = p.open_fds;
  d.start_time_seconds =
      std::chrono::duration<double>(started_wall_.time_since_epoch()).count();
  for (const auto& e : registry_->List()) {
    ExportStats& es = s.exports.emplace_back();
    es.name = e->name();
    es.backend = std::string(NameOf(e->config().backend));
    es.draining = e->draining();
    es.size_bytes = e->size();
    es.clients = static_cast<uint64_t>(std::max(0, e->clients()));
    es.io = e->io_stats().Snapshot();
    if (e->overlay() != nullptr) {
      const OverlayStats os = e->overlay()->stats();
      es.overlay = true;
      es.overlay_allocated_bytes = os.allocated_bytes;
      es.overlay_zero_bytes = os.zero_bytes;
      es.overlay_copy_ups = os.copy_ups;
    }
    for (const BitmapInfo& bi : e->bitmaps().List()) {
      es.bitmaps.push_back(
          {bi.name, bi.active, bi.consistent, bi.dirty_bytes, bi.memory_bytes});
    }
    {
      const ThrottleStats q = e->qos().stats();
      std::shared_ptr<QosGroup> group = e->qos().group();
      es.qos.limited = e->qos().engaged();
      es.qos.group = group != nullptr ? group->name() : "";
      es.qos.throttled_requests = q.throttled_requests;
      es.qos.throttled_ns = q.throttled_ns;
      es.qos.waiting = q.waiting;
    }
    ExportBufferStats eb = e->buffers().stats();
    es.buffers.bytes_in_use = eb.in_use;
    es.buffers.bytes_cached = eb.cached;
    es.buffers.cap_bytes = e->buffers().current()->memory_cap_bytes;
    es.buffers.cap_full = eb.cap_full;
    es.buffers.allocations = eb.allocations;
    es.buffers.reuses = eb.reuses;
    es.buffers.streamed = eb.streamed;
  }
  for (const QosGroupInfo& g : manager_->ListQosGroups()) {
    QosGroupStats& gs = s.qos_groups.emplace_back();
    gs.name = g.name;
    gs.members = static_cast<uint64_t>(std::max(0, g.served_members));
    gs.qos.limited = true;
    gs.qos.throttled_requests = g.stats.throttled_requests;
    gs.qos.throttled_ns = g.stats.throttled_ns;
    gs.qos.waiting = g.stats.waiting;
  }
  for (const ExportInfo& f : manager_->FailedExports()) {
    ExportStats& es = s.exports.emplace_back();
    es.name = f.config.name;
    es.backend = std::string(NameOf(f.config.backend));
    es.failed = true;
    es.failure = f.failure;
  }
  return s;
}

Daemon::~Daemon() {
  metrics_.reset();  // scrapes read everything below
  control_.reset();  // no API calls into what follows
  if (abandoned()) {
    // The server's threads and abandoned sessions live on, using their
    // exports and buffers: none of that is ever destroyed.
    (void)server_.release();
    (void)manager_.release();
    (void)new std::shared_ptr<ExportRegistry>(std::move(registry_));
    (void)buffers_.release();
    return;
  }
  server_.reset();  // sessions end before exports and buffers go
  // May wait on a backend (closing an rbd image releases its lock): still
  // under the shutdown watchdog, destroyed last.
  manager_.reset();
  registry_.reset();
}

void Daemon::ExitStuck() {
  std::string flushing;
  {
    MutexLock lock(&flush_mu_);
    flushing = absl::StrJoin(flushing_, ", ");
  }
  spdlog::error(
      "shutdown has not finished in time (the drain timeout plus {}): a "
      "backend does not answer{}{}; exiting now without releasing anything "
      "(Ceph locks expire with the client's watch)",
      FormatDuration(kStuckWait + kShutdownGrace),
      flushing.empty() ? "" : "; final flush not finished for export(s) ",
      flushing);
  spdlog::default_logger()->flush();  // other threads may still log
  std::fflush(nullptr);
  std::_Exit(1);
}

void Daemon::ScheduleIdleRelease() {
  idle_timer_.expires_after(std::chrono::seconds(1));
  idle_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec) return;
    buffers_->ReleaseIdle();
    // Export pages freed by TRIM or rewrites, back to the OS.
    TrimHeapIfWorthIt(16 << 20);
    ScheduleIdleRelease();
  });
}

absl::Status Daemon::WriteReadyFile() const {
  if (config_.ready_file.empty()) return absl::OkStatus();
  std::string text;
  for (const ListenAddress& a : server_->bound()) {
    absl::StrAppend(&text, a.ToString(), "\n");
  }
  if (control_)
    absl::StrAppend(&text, "control=", control_->bound().ToString(), "\n");
  if (metrics_) absl::StrAppend(&text, "metrics=", metrics_->bound(), "\n");
  std::string tmp = absl::StrCat(config_.ready_file, ".tmp");
  // Never write through what is already at the temporary path (a symlink
  // planted there would redirect the write): remove it, then create the
  // file exclusively, refusing a symlink created meanwhile.
  if (::unlink(tmp.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, absl::StrCat("remove stale ", tmp));
  }
  int fd = ::open(tmp.c_str(),
                  O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("create ", tmp));
  int error = 0;
  ssize_t n = ::write(fd, text.data(), text.size());
  if (n < 0) {
    error = errno;
  } else if (static_cast<size_t>(n) != text.size()) {
    error = EIO;  // short write: the disk is full, say
  }
  if (::fsync(fd) != 0 && error == 0) error = errno;
  ::close(fd);
  if (error == 0 && ::rename(tmp.c_str(), config_.ready_file.c_str()) != 0) {
    error = errno;
  }
  if (error != 0) {
    ::unlink(tmp.c_str());
    return ErrnoStatus(error, absl::StrCat("write ", config_.ready_file));
  }
  return absl::OkStatus();
}

void Daemon::RequestStop() {
  boost::asio::post(main_, [this] {
    if (!draining_) spdlog::info("stop requested, draining");
    BeginDrain();
  });
}

namespace {

const char* SignalName(int sig) {
  switch (sig) {
    case SIGINT:
      return "SIGINT";
    case SIGTERM:
      return "SIGTERM";
    case SIGHUP:
      return "SIGHUP";
    case SIGUSR1:
      return "SIGUSR1";
    case SIGUSR2:
      return "SIGUSR2";
  }
  return "a signal";
}

}  // namespace

void Daemon::WaitForSignal() {
  signals_.async_wait([this](const boost::system::error_code& ec, int sig) {
    if (ec) return;  // the set is going away
    OnSignal(sig);
    WaitForSignal();
  });
}

void Daemon::OnSignal(int sig) {
  const char* name = SignalName(sig);
  switch (sig) {
    case SIGINT:
    case SIGTERM:
      if (!draining_) {
        spdlog::info(
            "received {}, draining (for up to {}; send {} again to stop at "
            "once)",
            name, FormatDuration(config_.drain_timeout), name);
        BeginDrain();
      } else {
        spdlog::warn(
            "received {} during the drain: closing the remaining "
            "connections now, then flushing",
            name);
        StopWaiting();
      }
      break;
    case SIGHUP:
      spdlog::warn(
          "received SIGHUP: configuration reload is not supported (change "
          "exports with nbdctl); ignored");
      break;
    default:
      spdlog::info("received {}: ignored", name);
      break;
  }
}

absl::Status Daemon::Drain() {
  NotifyStopping("draining");
  // Nothing may outlast the drain timeout: not the sessions, not the
  // control calls. DRAIN deletes in progress stop waiting for their
  // clients first, since the control server's shutdown waits for its
  // handlers.
  const auto deadline =
      std::chrono::steady_clock::now() + config_.drain_timeout;
  auto left = [deadline] {
    return std::max(std::chrono::milliseconds(0),
                    std::chrono::duration_cast<std::chrono::milliseconds>(
                        deadline - std::chrono::steady_clock::now()));
  };
  manager_->AbortDrains();
  if (control_) {
    control_->SetNotServing();
    control_->Shutdown(left());
  }
  server_->Shutdown(left(), kStuckWait);
  // In parallel: one export whose storage stopped answering must not keep
  // the others from being flushed before the watchdog ends the process.
  std::vector<std::shared_ptr<Export>> writable;
  for (auto& e : registry_->List()) {
    if (e->read_only()) {
      if (server_->abandoned() == 0 || e->clients() == 0) SaveBitmaps(*e);
      continue;
    }
    if (server_->abandoned() > 0 && e->clients() > 0) {
      // Its flush would wait behind the requests stuck in its backend.
      spdlog::error(
          "export \"{}\" not flushed: requests of its {} client(s) are "
          "stuck in its backend",
          e->name(), e->clients());
      continue;
    }
    writable.push_back(std::move(e));
  }
  Mutex mu;
  absl::Status result = absl::OkStatus();
  {
    boost::asio::thread_pool flushers(
        std::clamp<size_t>(writable.size(), 1, kMaxFlushThreads));
    for (const auto& e : writable) {
      {
        MutexLock lock(&flush_mu_);
        flushing_.insert(e->name());
      }
      boost::asio::post(flushers, [this, e, &mu, &result] {
        absl::Status st = e->backend().Flush();
        {
          MutexLock lock(&flush_mu_);
          flushing_.erase(e->name());
        }
        // Only after a good flush are the bits worth trusting at the next
        // start; otherwise they stay in use (inconsistent there).
        if (st.ok()) SaveBitmaps(*e);
        if (st.ok()) return;
        spdlog::error("flushing export \"{}\" failed: {}", e->name(),
                      st.message());
        MutexLock lock(&mu);
        if (result.ok()) result = st;
      });
    }
    flushers.join();
  }
  if (size_t n = server_->abandoned(); n > 0) {
    // The process will end without tearing down; close what no abandoned
    // session holds now, so an rbd image's lock is released, not left to
    // expire (a restart at once would find it held).
    for (const auto& e : registry_->List()) {
      if (e->clients() == 0) (void)registry_->Remove(e->name());
    }
    if (result.ok()) {
      result = absl::UnavailableError(
          absl::StrCat(n,
                       " session(s) abandoned waiting on a backend that does "
                       "not answer"));
    }
  }
  return result;
}

void Daemon::SaveBitmaps(const Export& e) {
  if (absl::Status st = manager_->SaveBitmapsAtStop(e); !st.ok()) {
    spdlog::error(
        "export \"{}\": its dirty bitmaps could not be saved and will be "
        "inconsistent at the next start: {}",
        e.name(), std::string(st.message()));
  }
}

void Daemon::BeginDrain() {
  if (draining_) return;
  draining_ = true;
  main_.stop();
}

void Daemon::StopWaiting() {
  if (shutdown_watchdog_ != nullptr) {
    shutdown_watchdog_->Shorten(kStuckWait + kShutdownGrace);
  }
  manager_->AbortDrains();
  if (control_) control_->StopWaiting();
  server_->StopWaiting();
}

absl::Status Daemon::Run() {
  // Caught from here until the Daemon is destroyed. SIGHUP and SIGUSR1/2
  // must never kill it: main() ignores them until this point.
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2}) {
    boost::system::error_code ec;
    signals_.add(sig, ec);
    if (ec) spdlog::error("cannot catch {}: {}", SignalName(sig), ec.message());
  }
  WaitForSignal();
  std::signal(SIGPIPE, SIG_IGN);
  server_->Start();
  ScheduleIdleRelease();
  for (const auto& e : registry_->List()) {
    BufferSettings bs = e->buffers().settings();
    spdlog::info(
        "serving export \"{}\": {} {}{}{}, buffers {}{}{}", e->name(),
        NameOf(e->config().backend), FormatSize(e->size()),
        e->config().base.empty()
            ? std::string()
            : absl::StrCat(", overlay on ", e->config().base),
        e->served_read_only() ? ", read-only" : "", NameOf(bs.strategy),
        bs.memory_cap_bytes
            ? absl::StrCat(" capped at ", FormatSize(bs.memory_cap_bytes))
            : std::string(),
        e->name() == registry_->default_name() ? " (default)" : "");
  }
  if (absl::Status st = WriteReadyFile(); !st.ok()) {
    spdlog::error("{}", st.message());
  }
  if (control_) spdlog::info("control API on {}", control_->bound().ToString());
  if (metrics_) spdlog::info("metrics on http://{}/metrics", metrics_->bound());
  NotifyReady(
      absl::StrCat("serving ", registry_->List().size(), " export(s) on ",
                   absl::StrJoin(server_->bound(), " ",
                                 [](std::string* out, const ListenAddress& a) {
                                   out->append(a.ToString());
                                 })));
  main_.run();  // until SIGINT, SIGTERM or RequestStop()
  shutdown_watchdog_ = std::make_unique<Watchdog>(
      config_.drain_timeout + kStuckWait + kShutdownGrace,
      [this] { ExitStuck(); });
  idle_timer_.cancel();
  // main_ goes on handling signals on a thread of its own while this one
  // drains: a second SIGINT/SIGTERM cuts the drain short.
  main_.restart();
  std::thread signal_thread([this] { main_.run(); });
  absl::Status result = Drain();
  main_.stop();
  signal_thread.join();
  MemoryBudgetStats b = buffers_->budget().stats();
  spdlog::info(
      "request buffers: peak {} bytes in use (cap {}), {} charges refused "
      "by the cap",
      b.peak, b.cap == 0 ? std::string("none") : std::to_string(b.cap),
      b.refused);
  spdlog::info("stopped");
  return result;
}

}  // namespace nbdmgr
