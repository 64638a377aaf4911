// nbdctl daemon.

#include <cstdio>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "lib/util/duration.h"
#include "lib/util/size.h"
#include "nbdmgr/v1/daemon.grpc.pb.h"

namespace nbdmgr::cli {
namespace {

void Print(const Global& g, const v1::Daemon& d) {
  if (g.output == "json") {
    std::printf("%s", ToJson(d).c_str());
    return;
  }
  std::string listen;
  for (const auto& a : d.nbd_listen())
    absl::StrAppend(&listen, listen.empty() ? "" : " ", a);
  std::printf("version:          %s\n", d.version().c_str());
  std::printf("nbd listen:       %s\n", listen.c_str());
  std::printf("control listen:   %s\n", d.control_listen().c_str());
  std::printf(
      "uptime:           %s\n",
      FormatDuration(std::chrono::milliseconds(d.uptime().seconds() * 1000))
          .c_str());
  std::printf("exports:          %u\n", d.exports());
  std::printf("clients:          %u\n", d.connected_clients());
  std::printf(
      "memory cap:       %s\n",
      d.memory_cap_bytes() ? FormatSize(d.memory_cap_bytes()).c_str() : "none");
  std::printf("buffers in use:   %s\n",
              FormatSize(d.buffer_bytes_in_use()).c_str());
  std::printf("buffers cached:   %s\n",
              FormatSize(d.buffer_bytes_cached()).c_str());
}

int RunDaemon(const Global& g, const std::optional<std::string>& memory_cap,
              const CLI::App& cmd) {
  std::string error;
  auto channel = Connect(g, &error);
  if (channel == nullptr)
    return UsageError(absl::StrCat("--control: ", error), "");
  auto stub = v1::DaemonService::NewStub(channel);
  v1::Daemon out;
  grpc::Status s;
  if (memory_cap) {
    auto cap = ParseSize(*memory_cap);
    if (!cap.ok()) {
      return UsageError(absl::StrCat("--memory-cap: ", cap.status().message()),
                        HelpOf(cmd));
    }
    v1::UpdateDaemonRequest req;
    req.mutable_daemon()->set_memory_cap_bytes(*cap);
    req.mutable_update_mask()->add_paths("memory_cap_bytes");
    s = stub->UpdateDaemon(Context().get(), req, &out);
  } else {
    s = stub->GetDaemon(Context().get(), v1::GetDaemonRequest(), &out);
  }
  if (!s.ok()) return ReportError(s);
  Print(g, out);
  return kExitOk;
}

}  // namespace

Command AddDaemonCommand(CLI::App& app, const Global& g) {
  CLI::App* cmd = AddSubcommand(
      app, "daemon",
      "Shows the daemon; --memory-cap SIZE changes its cap.\n"
      "Shows the daemon (version, addresses, uptime, totals); with\n"
      "--memory-cap, changes the daemon-wide cap on request-buffer memory.");
  auto memory_cap = std::make_shared<std::optional<std::string>>();
  AddOptional(cmd, "--memory-cap", "SIZE", memory_cap.get(),
              "the new cap (0 removes it)");
  return {cmd,
          [&g, memory_cap, cmd] { return RunDaemon(g, *memory_cap, *cmd); }};
}

}  // namespace nbdmgr::cli
