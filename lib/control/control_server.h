#ifndef NBDMGR_LIB_CONTROL_CONTROL_SERVER_H_
#define NBDMGR_LIB_CONTROL_CONTROL_SERVER_H_

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/util/listen_address.h"
#include "lib/util/socket_path.h"

namespace nbdmgr {

struct ControlServerOptions {
  ListenAddress listen;
  // TCP needs TLS (cert + key, optional client CA for mutual TLS) unless
  // `insecure` is set explicitly. A Unix socket is created with mode 0600.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  bool insecure = false;
};

// Counts the control API's unary calls in progress (control_server.cc).
class ControlCallTracker;

// The gRPC server of the control plane, with the health service and server
// reflection. The services must outlive it. Thread-safe (gRPC's threads);
// Shutdown() and StopWaiting() may be called from any thread.
class ControlServer {
 public:
  // Binds and starts serving. InvalidArgument for TCP without TLS or
  // --control-insecure, or unreadable TLS files; Unavailable if the address
  // cannot be bound. For a Unix socket path that already exists:
  // FailedPrecondition, leaving it untouched, if it is not a socket or if a
  // process accepts connections on it (another daemon serving); a stale
  // socket (connect() refused) is removed first.
  static absl::StatusOr<std::unique_ptr<ControlServer>> Start(
      const ControlServerOptions& options,
      std::vector<grpc::Service*> services);
  // Shutdown(0).
  ~ControlServer();

  // Health checks answer NOT_SERVING from now on (the daemon is draining).
  void SetNotServing();
  // Stops serving. Unary calls in progress get up to `grace` (less if
  // StopWaiting() is called) to finish; then every call still open (health
  // Watch and reflection streams, late unary calls) is cancelled and every
  // connection closed, idle ones included, without waiting for clients.
  // Returns once every handler has returned: a handler that never returns
  // holds it, so handlers must be bounded (see ExportManager::AbortDrains).
  // Removes the Unix socket file if it is still the one this server bound.
  // Idempotent.
  void Shutdown(std::chrono::milliseconds grace);
  // Makes a Shutdown() in progress, or the next one, stop waiting for unary
  // calls now. Returns at once.
  void StopWaiting();
  // The bound address ("unix:/path" or "tcp:host:port" with the real port).
  const ListenAddress& bound() const { return bound_; }

 private:
  ControlServer(std::unique_ptr<grpc::Server> server, ListenAddress bound,
                std::shared_ptr<ControlCallTracker> calls);

  std::unique_ptr<grpc::Server> server_;
  ListenAddress bound_;
  // Counts the unary calls in progress (shared with the server's
  // interceptors, which may outlive a call to Shutdown()).
  std::shared_ptr<ControlCallTracker> calls_;
  // The socket file bound (Unix only), to remove only that one on exit.
  std::optional<SocketPathClaim> socket_claim_;  // unix: the path we bound
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_CONTROL_CONTROL_SERVER_H_
