#ifndef NBDMGR_LIB_DAEMON_DAEMON_H_
#define NBDMGR_LIB_DAEMON_DAEMON_H_

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <memory>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "lib/buffer/buffer_policy.h"
#include "lib/control/control_server.h"
#include "lib/control/export_manager.h"
#include "lib/control/grpc_service.h"
#include "lib/daemon/daemon_config.h"
#include "lib/export/export_registry.h"
#include "lib/metrics/metrics_server.h"
#include "lib/metrics/stats_snapshot.h"
#include "lib/nbd/server.h"
#include "lib/util/mutex.h"
#include "lib/util/watchdog.h"

namespace nbdmgr {

// The running daemon: exports, NBD server, signal handling. Create() does
// everything that can fail (opening backends, binding sockets) so a bad
// configuration is reported before anything is served.
class Daemon {
 public:
  static absl::StatusOr<std::unique_ptr<Daemon>> Create(DaemonConfig config);
  ~Daemon();

  // Serves until SIGINT or SIGTERM (or RequestStop()), then drains: stops
  // accepting, lets in-flight requests and control calls finish within the
  // drain timeout (DRAIN deletes in progress stop waiting), and flushes
  // writable exports. A second SIGINT/SIGTERM during the drain closes what
  // remains at once; the flush still happens. SIGHUP, SIGUSR1 and SIGUSR2
  // are logged and ignored. Returns the first flush error, if any. Call
  // once.
  absl::Status Run();
  // Thread-safe; makes Run() begin draining (no-op once it drains).
  void RequestStop();

  const std::vector<ListenAddress>& bound() const { return server_->bound(); }
  ExportRegistry& registry() { return *registry_; }
  // The control address actually bound, if the control plane is on.
  std::optional<ListenAddress> control_address() const;
  BufferSystem& buffers() { return *buffers_; }
  // Run() returned after abandoning sessions stuck on a backend call that
  // never came back: their threads still run. Exit with std::_Exit rather
  // than returning from main (destroying the Daemon leaks what they use;
  // static destructors would not wait for them).
  bool abandoned() const {
    return server_ != nullptr && server_->abandoned() > 0;
  }
  // Every counter, sampled now (thread-safe): what /metrics, GetStats and
  // nbdctl stats report.
  StatsSnapshot CollectStats() const;

 private:
  Daemon(DaemonConfig config, std::unique_ptr<BufferSystem> buffers,
         std::shared_ptr<ExportRegistry> registry);
  absl::Status StartControl();
  DaemonSnapshot Snapshot() const;
  void ScheduleIdleRelease();
  absl::Status WriteReadyFile() const;
  // Arms signals_ for the next signal; the handler runs on main_.
  void WaitForSignal();
  void OnSignal(int sig);
  // Makes main_.run() return so Run() drains; no-op if already draining.
  // On main_'s thread.
  void BeginDrain();
  // Cuts a drain short: sessions and control calls are closed now.
  // Thread-safe.
  void StopWaiting();
  // After main_.run(): stops the listeners and sessions within the drain
  // timeout, then flushes every writable export (in parallel). Returns
  // the first flush error, or Unavailable when sessions were abandoned.
  absl::Status Drain();
  // Saves `e`'s dirty bitmaps at a clean stop (errors logged).
  void SaveBitmaps(const Export& e);
  // The shutdown watchdog's end: logs what is still unfinished and exits
  // the process with status 1, tearing nothing down.
  [[noreturn]] void ExitStuck();

  const DaemonConfig config_;
  // Armed when the drain begins: a backend that never answers (a storage
  // system gone silent) cannot keep the daemon from exiting. Expires
  // kStuckWait + kShutdownGrace after the drain deadline (or after a
  // second signal); destroyed last but for the state it reads.
  Mutex flush_mu_;  // before the watchdog, which reads flushing_
  std::set<std::string> flushing_ ABSL_GUARDED_BY(flush_mu_);
  std::unique_ptr<Watchdog> shutdown_watchdog_;
  // Declared before the registry: exports (and their leases) go first.
  std::unique_ptr<BufferSystem> buffers_;
  std::shared_ptr<ExportRegistry> registry_;
  std::unique_ptr<ExportManager> manager_;
  std::unique_ptr<nbd::Server> server_;
  std::unique_ptr<SessionControl> session_control_;
  std::unique_ptr<ExportServiceImpl> export_service_;
  std::unique_ptr<BitmapServiceImpl> bitmap_service_;
  std::unique_ptr<OverlayServiceImpl> overlay_service_;
  std::unique_ptr<QosServiceImpl> qos_service_;
  std::unique_ptr<DaemonServiceImpl> daemon_service_;
  std::unique_ptr<StatsServiceImpl> stats_service_;
  std::unique_ptr<MetricsServer> metrics_;
  std::unique_ptr<ControlServer> control_;
  const std::chrono::steady_clock::time_point started_ =
      std::chrono::steady_clock::now();
  const std::chrono::system_clock::time_point started_wall_ =
      std::chrono::system_clock::now();
  boost::asio::io_context main_;
  boost::asio::steady_timer idle_timer_{main_};
  // Handled signals stay caught (queued, not fatal) until the Daemon goes.
  boost::asio::signal_set signals_{main_};
  // Only touched by handlers on main_ (run by one thread at a time).
  bool draining_ = false;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_DAEMON_DAEMON_H_
