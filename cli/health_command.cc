// nbdctl health: the standard grpc.health.v1.Health/Check, for probes
// (Kubernetes exec probes, scripts). Exit 0 only when SERVING.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include <cstdio>
#include <future>
#include <memory>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/flags.h"

namespace nbdmgr::cli {
namespace {

int RunHealth(const Global& g, const std::string& service,
              const CLI::App& cmd) {
  if (service.size() > 127) return UsageError("SERVICE too long", HelpOf(cmd));
  std::string error;
  auto channel = Connect(g, &error);
  if (channel == nullptr)
    return UsageError(absl::StrCat("--control: ", error), "");

  // HealthCheckRequest{service = 1}, encoded by hand: the message is tiny
  // and Debian ships no generated stub for it.
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer in(&slice, 1), out;
  grpc::GenericStub stub(channel);
  auto ctx = Context(5);
  std::promise<grpc::Status> done;
  stub.UnaryCall(ctx.get(), "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                 &in, &out, [&done](grpc::Status s) { done.set_value(s); });
  grpc::Status s = done.get_future().get();
  if (!s.ok()) return ReportError(s);
  std::vector<grpc::Slice> slices;
  (void)out.Dump(&slices);
  std::string response;
  for (const grpc::Slice& sl : slices) {
    response.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  }
  // HealthCheckResponse{status = 1}: 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING,
  // 3 SERVICE_UNKNOWN; absent means 0.
  int status = response.size() >= 2 && response[0] == 0x08 ? response[1] : 0;
  static const char* kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING",
                                 "SERVICE_UNKNOWN"};
  std::printf("%s\n", status >= 0 && status <= 3 ? kNames[status] : "UNKNOWN");
  return status == 1 ? kExitOk : kExitServerError;
}

}  // namespace

Command AddHealthCommand(CLI::App& app, const Global& g) {
  CLI::App* cmd = AddSubcommand(
      app, "health",
      "gRPC health check (exit 0 if SERVING; for probes).\n"
      "Asks the daemon's grpc.health.v1.Health service whether SERVICE\n"
      "(default: the whole server) is serving. Prints SERVING, NOT_SERVING\n"
      "or SERVICE_UNKNOWN; exits 0 only for SERVING (1 otherwise, 3 if the\n"
      "daemon is unreachable). Meant for liveness/readiness probes.");
  auto service = std::make_shared<std::string>();
  cmd->add_option("SERVICE", *service, "a gRPC service name")->type_name("");
  return {cmd, [&g, service, cmd] { return RunHealth(g, *service, *cmd); }};
}

}  // namespace nbdmgr::cli
