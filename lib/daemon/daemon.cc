#include "lib/daemon/daemon.h"

#include <fcntl.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>

#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "lib/util/errors.h"
#include "lib/util/size.h"
#include "lib/util/strings.h"
#include "spdlog/spdlog.h"

namespace nbdmgr {

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Create(DaemonConfig config) {
  auto buffers = std::make_unique<BufferSystem>(BlockSizes{}.maximum_payload,
                                                config.memory_cap_bytes);
  auto registry = std::make_shared<ExportRegistry>();
  for (const ExportConfig& ec : config.exports) {
    absl::StatusOr<std::shared_ptr<Export>> e = Export::Create(ec, *buffers);
    if (!e.ok()) {
      return absl::Status(e.status().code(),
                          absl::StrCat("export \"", ec.name, "\": ",
                                       e.status().message()));
    }
    if (absl::Status st = registry->Add(*e); !st.ok()) return st;
  }
  registry->SetDefault(config.default_export);

  nbd::ServerOptions so;
  so.listen = config.nbd_listen;
  so.io_threads = config.io_threads;
  so.blocking_threads = config.blocking_threads;
  absl::StatusOr<std::unique_ptr<nbd::Server>> server =
      nbd::Server::Create(so, registry);
  if (!server.ok()) return server.status();
  return std::unique_ptr<Daemon>(new Daemon(std::move(config), std::move(buffers),
                                            std::move(registry),
                                            std::move(*server)));
}

Daemon::Daemon(DaemonConfig config, std::unique_ptr<BufferSystem> buffers,
               std::shared_ptr<ExportRegistry> registry,
               std::unique_ptr<nbd::Server> server)
    : config_(std::move(config)),
      buffers_(std::move(buffers)),
      registry_(std::move(registry)),
      server_(std::move(server)) {}

Daemon::~Daemon() {
  server_.reset();  // sessions end before exports and buffers go
  registry_.reset();
}

void Daemon::ScheduleIdleRelease() {
  idle_timer_.expires_after(std::chrono::seconds(1));
  idle_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec) return;
    buffers_->ReleaseIdle();
    ScheduleIdleRelease();
  });
}

absl::Status Daemon::WriteReadyFile() const {
  if (config_.ready_file.empty()) return absl::OkStatus();
  std::string text;
  for (const ListenAddress& a : server_->bound()) {
    absl::StrAppend(&text, a.ToString(), "\n");
  }
  std::string tmp = absl::StrCat(config_.ready_file, ".tmp");
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("create ", tmp));
  bool ok = ::write(fd, text.data(), text.size()) ==
            static_cast<ssize_t>(text.size());
  ok = ::fsync(fd) == 0 && ok;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), config_.ready_file.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("write ", config_.ready_file));
  }
  return absl::OkStatus();
}

void Daemon::RequestStop() {
  boost::asio::post(main_, [this] { main_.stop(); });
}

absl::Status Daemon::Run() {
  boost::asio::signal_set signals(main_, SIGINT, SIGTERM);
  signals.async_wait([this](const boost::system::error_code& ec, int sig) {
    if (!ec) spdlog::info("received {}, draining", strsignal(sig));
    main_.stop();
  });
  std::signal(SIGPIPE, SIG_IGN);
  server_->Start();
  ScheduleIdleRelease();
  for (const auto& e : registry_->List()) {
    BufferSettings bs = e->buffers().settings();
    spdlog::info("serving export \"{}\": {} {}{}, buffers {}{}{}", e->name(),
                 NameOf(e->config().backend), FormatSize(e->size()),
                 e->read_only() ? ", read-only" : "", NameOf(bs.strategy),
                 bs.memory_cap_bytes
                     ? absl::StrCat(" capped at ", FormatSize(bs.memory_cap_bytes))
                     : std::string(),
                 e->name() == registry_->default_name() ? " (default)" : "");
  }
  if (absl::Status st = WriteReadyFile(); !st.ok()) {
    spdlog::error("{}", st.message());
  }
  main_.run();

  server_->Shutdown(config_.drain_timeout);
  absl::Status result = absl::OkStatus();
  for (const auto& e : registry_->List()) {
    if (e->read_only()) continue;
    absl::Status st = e->backend().Flush();
    if (!st.ok()) {
      spdlog::error("flushing export \"{}\" failed: {}", e->name(), st.message());
      if (result.ok()) result = st;
    }
  }
  MemoryBudgetStats b = buffers_->budget().stats();
  spdlog::info("request buffers: peak {} bytes in use (cap {}), {} waits for the cap",
               b.peak, b.cap == 0 ? std::string("none") : std::to_string(b.cap),
               b.waits);
  spdlog::info("stopped");
  return result;
}

}  // namespace nbdmgr
