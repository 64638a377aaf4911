// nbdmgrd: flags -> DaemonConfig -> Daemon::Create() -> Run().

#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "lib/daemon/daemon.h"
#include "lib/daemon/daemon_flags.h"
#include "spdlog/spdlog.h"

int main(int argc, char** argv) {
  // Until Daemon::Run() catches them (to log them), these must not kill a
  // daemon that is starting. SIGINT and SIGTERM keep their default action:
  // before Run() there is nothing to drain.
  std::signal(SIGHUP, SIG_IGN);
  std::signal(SIGUSR1, SIG_IGN);
  std::signal(SIGUSR2, SIG_IGN);
  std::signal(SIGPIPE, SIG_IGN);
  absl::StatusOr<nbdmgr::DaemonFlags> flags =
      nbdmgr::ParseDaemonFlags(argc, argv);
  if (!flags.ok()) {
    std::fprintf(stderr, "nbdmgrd: %s\n",
                 std::string(flags.status().message()).c_str());
    return 2;
  }
  if (flags->help) {
    std::fputs(nbdmgr::DaemonUsage().c_str(), stdout);
    return 0;
  }
  if (flags->version) {
    std::printf("nbdmgrd %s\n", NBDMGR_VERSION);
    return 0;
  }
  if (flags->check_config) {
    if (absl::Status st = nbdmgr::CheckConfigAgainstState(flags->config);
        !st.ok()) {
      std::fprintf(stderr, "nbdmgrd: %s\n", std::string(st.message()).c_str());
      return 1;
    }
    std::fputs(nbdmgr::DescribeConfig(flags->config).c_str(), stdout);
    return 0;
  }
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  spdlog::set_level(spdlog::level::from_str(flags->config.log_level));

  absl::StatusOr<std::unique_ptr<nbdmgr::Daemon>> daemon =
      nbdmgr::Daemon::Create(std::move(flags->config));
  if (!daemon.ok()) {
    std::fprintf(stderr, "nbdmgrd: %s\n",
                 std::string(daemon.status().message()).c_str());
    return 1;
  }
  absl::Status st = (*daemon)->Run();
  if ((*daemon)->abandoned()) {
    spdlog::error("exiting without tearing down: {}",
                  std::string(st.message()));
    spdlog::default_logger()->flush();
    std::fflush(nullptr);
    std::_Exit(1);
  }
  return st.ok() ? 0 : 1;
}
