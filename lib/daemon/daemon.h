#ifndef NBDMGR_LIB_DAEMON_DAEMON_H_
#define NBDMGR_LIB_DAEMON_DAEMON_H_

#include <memory>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "absl/status/statusor.h"
#include "lib/buffer/buffer_policy.h"
#include "lib/daemon/daemon_config.h"
#include "lib/export/export_registry.h"
#include "lib/nbd/server.h"

namespace nbdmgr {

// The running daemon: exports, NBD server, signal handling. Create() does
// everything that can fail (opening backends, binding sockets) so a bad
// configuration is reported before anything is served.
class Daemon {
 public:
  static absl::StatusOr<std::unique_ptr<Daemon>> Create(DaemonConfig config);
  ~Daemon();

  // Serves until SIGINT or SIGTERM (or RequestStop()), then drains: stops
  // accepting, lets in-flight requests finish within the drain timeout, and
  // flushes writable exports. Returns the first flush error, if any.
  absl::Status Run();
  // Thread-safe; makes Run() begin draining.
  void RequestStop();

  const std::vector<ListenAddress>& bound() const { return server_->bound(); }
  ExportRegistry& registry() { return *registry_; }
  BufferSystem& buffers() { return *buffers_; }

 private:
  Daemon(DaemonConfig config, std::unique_ptr<BufferSystem> buffers,
         std::shared_ptr<ExportRegistry> registry,
         std::unique_ptr<nbd::Server> server);
  void ScheduleIdleRelease();
  absl::Status WriteReadyFile() const;

  const DaemonConfig config_;
  // Declared before the registry: exports (and their leases) go first.
  std::unique_ptr<BufferSystem> buffers_;
  std::shared_ptr<ExportRegistry> registry_;
  std::unique_ptr<nbd::Server> server_;
  boost::asio::io_context main_;
  boost::asio::steady_timer idle_timer_{main_};
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_DAEMON_DAEMON_H_
