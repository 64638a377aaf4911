// nbdctl daemon.

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "lib/util/duration.h"
#include "lib/util/size.h"
#include "nbdmgr/v1/daemon.grpc.pb.h"

namespace nbdmgr::cli {
namespace {

constexpr char kDaemonHelp[] = R"(Usage: nbdctl daemon [--memory-cap SIZE]

Shows the daemon (version, addresses, uptime, totals); with --memory-cap,
changes the daemon-wide cap on request-buffer memory (0 removes it).
)";

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

}  // namespace

int DaemonCommand(const Global& g, const std::vector<std::string>& words) {
  auto a = ParseArgs(words, {"--memory-cap"}, {});
  if (!a.ok())
    return UsageError(std::string(a.status().message()), kDaemonHelp);
  if (a->help) return std::printf("%s", kDaemonHelp), kExitOk;
  if (!a->positional.empty())
    return UsageError("daemon takes no arguments", kDaemonHelp);
  std::string error;
  auto channel = Connect(g, &error);
  if (channel == nullptr)
    return UsageError(absl::StrCat("--control: ", error), "");
  auto stub = v1::DaemonService::NewStub(channel);
  v1::Daemon out;
  grpc::Status s;
  if (a->has("--memory-cap")) {
    auto cap = ParseSize(a->get("--memory-cap"));
    if (!cap.ok()) {
      return UsageError(absl::StrCat("--memory-cap: ", cap.status().message()),
                        kDaemonHelp);
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

}  // namespace nbdmgr::cli
