#include "lib/control/control_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/support/server_interceptor.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "lib/control/parse_error_interceptor.h"
#include "lib/util/errors.h"
#include "lib/util/mutex.h"
#include "lib/util/socket_path.h"
#include "spdlog/spdlog.h"

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

// Counts unary calls from the moment they are received until their handler
// has returned and the server has dropped them. Streaming calls (health
// Watch, reflection) are open-ended and not counted. Thread-safe.
class ControlCallTracker {
 public:
  void Begin() {
    MutexLock lock(&mu_);
    ++in_flight_;
  }
  void End() {
    MutexLock lock(&mu_);
    if (--in_flight_ == 0) changed_.SignalAll();
  }
  // Waits until no unary call is in progress, `deadline` passes or
  // StopWaiting() is called. Returns the number still in progress.
  int WaitIdle(std::chrono::steady_clock::time_point deadline) {
    MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return in_flight_ == 0 || stop_waiting_;
    };
    changed_.WaitFor(&mu_, deadline - std::chrono::steady_clock::now(), idle);
    return in_flight_;
  }
  void StopWaiting() {
    MutexLock lock(&mu_);
    stop_waiting_ = true;
    changed_.SignalAll();
  }

 private:
  Mutex mu_;
  CondVar changed_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_waiting_ ABSL_GUARDED_BY(mu_) = false;
};

namespace {

// Lives as long as its call: counts it in a ControlCallTracker.
class CallCounter final : public grpc::experimental::Interceptor {
 public:
  explicit CallCounter(std::shared_ptr<ControlCallTracker> calls)
      : calls_(std::move(calls)) {
    calls_->Begin();
  }
  ~CallCounter() override { calls_->End(); }
  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    methods->Proceed();
  }

 private:
  std::shared_ptr<ControlCallTracker> calls_;
};

class CallCounterFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CallCounterFactory(std::shared_ptr<ControlCallTracker> calls)
      : calls_(std::move(calls)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    if (info->type() != grpc::experimental::ServerRpcInfo::Type::UNARY) {
      return nullptr;
    }
    return new CallCounter(calls_);
  }

 private:
  std::shared_ptr<ControlCallTracker> calls_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ControlServer>> ControlServer::Start(
    const ControlServerOptions& o, std::vector<grpc::Service*> services) {
  std::shared_ptr<grpc::ServerCredentials> creds;
  std::string address;
  std::optional<SocketPathClaim> claim;  // unix: held from here on
  if (o.listen.kind == ListenAddress::Kind::kUnix) {
    std::error_code ec;
    std::filesystem::create_directories(
        std::filesystem::path(o.listen.path).parent_path(), ec);
    absl::StatusOr<SocketPathClaim> c = SocketPathClaim::Claim(
        o.listen.path, absl::StrCat("control socket ", o.listen.path),
        "--control-listen");
    if (!c.ok()) return c.status();
    claim.emplace(std::move(*c));
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
  auto calls = std::make_shared<ControlCallTracker>();
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(std::make_unique<CallCounterFactory>(calls));
  interceptors.push_back(std::make_unique<ParseErrorInterceptorFactory>());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
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
         {"nbdmgr.v1.ExportService", "nbdmgr.v1.BitmapService",
          "nbdmgr.v1.OverlayService", "nbdmgr.v1.QosService",
          "nbdmgr.v1.DaemonService", "nbdmgr.v1.StatsService"}) {
      health->SetServingStatus(name, true);
    }
  }
  ListenAddress bound = o.listen;
  if (bound.kind == ListenAddress::Kind::kTcp) {
    bound.port = static_cast<uint16_t>(port);
  }
  std::unique_ptr<ControlServer> control(
      new ControlServer(std::move(server), bound, std::move(calls)));
  if (bound.kind == ListenAddress::Kind::kUnix) {
    ::chmod(bound.path.c_str(), 0600);
    // Remember which file is ours: Shutdown() removes that one only.
    claim->Bound();
    control->socket_claim_.emplace(std::move(*claim));
  }
  return control;
}

ControlServer::ControlServer(std::unique_ptr<grpc::Server> server,
                             ListenAddress bound,
                             std::shared_ptr<ControlCallTracker> calls)
    : server_(std::move(server)),
      bound_(std::move(bound)),
      calls_(std::move(calls)) {}

ControlServer::~ControlServer() { Shutdown(std::chrono::milliseconds(0)); }

void ControlServer::SetNotServing() {
  if (server_ == nullptr) return;
  if (auto* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(false);
  }
}

void ControlServer::StopWaiting() { calls_->StopWaiting(); }

void ControlServer::Shutdown(std::chrono::milliseconds grace) {
  if (server_ == nullptr) return;
  // grpc::Server::Shutdown(deadline) alone would wait, up to the deadline,
  // for every call and every connection: for health Watch streams, which
  // never end, and for idle channels, which close only when the client
  // answers the GOAWAY ping (a client with no call in progress may not read
  // its socket for seconds). So wait here for the unary calls only, then
  // shut down with a deadline already passed: gRPC cancels what is left
  // and closes the connections at once, then waits for the handlers.
  int left = calls_->WaitIdle(std::chrono::steady_clock::now() + grace);
  if (left > 0) {
    spdlog::warn("control API: cancelling {} call(s) still in progress", left);
  }
  server_->Shutdown(std::chrono::system_clock::now());
  server_.reset();
  if (socket_claim_) socket_claim_->RemoveIfStillOurs();
}

}  // namespace nbdmgr
