#include "lib/control/control_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace nbdmgr {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     std::string_view what) {
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read ",
                     absl::string_view(what.data(), what.size()), " ", path));
  }
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ControlServer>> ControlServer::Start(
    const ControlServerOptions& o, std::vector<grpc::Service*> services) {
  std::shared_ptr<grpc::ServerCredentials> creds;
  std::string address;
  if (o.listen.kind == ListenAddress::Kind::kUnix) {
    std::error_code ec;
    std::filesystem::create_directories(
        std::filesystem::path(o.listen.path).parent_path(), ec);
    ::unlink(o.listen.path.c_str());  // a stale socket from an earlier run
    address = absl::StrCat("unix:", o.listen.path);
    creds = grpc::InsecureServerCredentials();  // protected by mode 0600
  } else {
    address = absl::StrCat(o.listen.host.find(':') != std::string::npos
                               ? absl::StrCat("[", o.listen.host, "]")
                               : o.listen.host,
                           ":", o.listen.port);
    if (!o.tls_cert_file.empty() || !o.tls_key_file.empty()) {
      if (o.tls_cert_file.empty() || o.tls_key_file.empty()) {
        return absl::InvalidArgumentError(
            "--control-tls-cert and --control-tls-key go together");
      }
      auto cert = ReadFile(o.tls_cert_file, "--control-tls-cert");
      if (!cert.ok()) return cert.status();
      auto key = ReadFile(o.tls_key_file, "--control-tls-key");
      if (!key.ok()) return key.status();
      grpc::SslServerCredentialsOptions ssl;
      ssl.pem_key_cert_pairs.push_back({*key, *cert});
      if (!o.tls_client_ca_file.empty()) {
        auto ca = ReadFile(o.tls_client_ca_file, "--control-tls-ca");
        if (!ca.ok()) return ca.status();
        ssl.pem_root_certs = *ca;
        ssl.client_certificate_request =
            GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
      }
      creds = grpc::SslServerCredentials(ssl);
    } else if (o.insecure) {
      creds = grpc::InsecureServerCredentials();
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "control address ", o.listen.ToString(),
          " is TCP: give --control-tls-cert and --control-tls-key, or "
          "--control-insecure to accept unauthenticated clients"));
    }
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, creds, &port);
  for (grpc::Service* s : services) builder.RegisterService(s);
  // The socket file must never be reachable with looser permissions.
  mode_t old_umask = ::umask(0077);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ::umask(old_umask);
  if (server == nullptr ||
      (o.listen.kind == ListenAddress::Kind::kTcp && port == 0)) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for control on ", o.listen.ToString()));
  }
  // Health per service too (grpc.health.v1 with a service name), so probes
  // can ask for the API they use; all go NOT_SERVING when draining.
  if (auto* health = server->GetHealthCheckService()) {
    for (const char* name :
         {"nbdmgr.v1.ExportService", "nbdmgr.v1.DaemonService",
          "nbdmgr.v1.StatsService"}) {
      health->SetServingStatus(name, true);
    }
  }
  ListenAddress bound = o.listen;
  if (bound.kind == ListenAddress::Kind::kUnix) {
    ::chmod(bound.path.c_str(), 0600);
  } else {
    bound.port = static_cast<uint16_t>(port);
  }
  return std::unique_ptr<ControlServer>(
      new ControlServer(std::move(server), bound));
}

ControlServer::~ControlServer() { Shutdown(); }

void ControlServer::SetNotServing() {
  if (server_ == nullptr) return;
  if (auto* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(false);
  }
}

void ControlServer::Shutdown() {
  if (server_ == nullptr) return;
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server_.reset();
  if (bound_.kind == ListenAddress::Kind::kUnix) ::unlink(bound_.path.c_str());
}

}  // namespace nbdmgr
