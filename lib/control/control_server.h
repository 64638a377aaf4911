#ifndef NBDMGR_LIB_CONTROL_CONTROL_SERVER_H_
#define NBDMGR_LIB_CONTROL_CONTROL_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/util/listen_address.h"

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

// The gRPC server of the control plane, with the health service and server
// reflection. The services must outlive it. Thread-safe (gRPC's threads).
class ControlServer {
 public:
  // Binds and starts serving. InvalidArgument for TCP without TLS or
  // --control-insecure, or unreadable TLS files; Unavailable if the address
  // cannot be bound.
  static absl::StatusOr<std::unique_ptr<ControlServer>> Start(
      const ControlServerOptions& options,
      std::vector<grpc::Service*> services);
  ~ControlServer();

  // Health checks answer NOT_SERVING from now on (the daemon is draining).
  void SetNotServing();
  void Shutdown();
  // The bound address ("unix:/path" or "tcp:host:port" with the real port).
  const ListenAddress& bound() const { return bound_; }

 private:
  ControlServer(std::unique_ptr<grpc::Server> server, ListenAddress bound)
      : server_(std::move(server)), bound_(std::move(bound)) {}
  std::unique_ptr<grpc::Server> server_;
  ListenAddress bound_;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_CONTROL_CONTROL_SERVER_H_
