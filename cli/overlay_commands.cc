// nbdctl overlay reset | commit | list.

#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "cli/flags.h"
#include "lib/convert/proto_convert.h"
#include "lib/util/size.h"
#include "nbdmgr/v1/overlay.grpc.pb.h"

namespace nbdmgr::cli {
namespace {

void PrintTable(const std::vector<const v1::Export*>& overlays) {
  std::printf("%-24s %8s %10s %10s %8s %7s\n", "NAME", "CLUSTER", "ALLOCATED",
              "ZEROED", "COPY-UPS", "CLIENTS");
  for (const v1::Export* e : overlays) {
    const v1::OverlayStatus& o = e->overlay();
    std::printf(
        "%-24s %8s %10s %10s %8llu %7u\n", ResourceId(e->name()).c_str(),
        FormatSize(o.cluster_size_bytes()).c_str(),
        FormatSize(o.allocated_bytes()).c_str(),
        FormatSize(o.zero_bytes()).c_str(),
        static_cast<unsigned long long>(o.copy_ups()), e->connected_clients());
  }
}

void PrintOne(const v1::Export& e) { PrintTable({&e}); }

int RunReset(const Global& g, const std::string& name) {
  v1::ResetOverlayRequest req;
  req.set_name(ExportResourceName(name));
  return CallAndPrint<v1::OverlayService>(
      g, &v1::OverlayService::Stub::ResetOverlay, req, PrintOne);
}

int RunCommit(const Global& g, const std::string& name) {
  v1::CommitOverlayRequest req;
  req.set_name(ExportResourceName(name));
  return CallAndPrint<v1::OverlayService>(
      g, &v1::OverlayService::Stub::CommitOverlay, req, PrintOne);
}

int RunList(const Global& g, const std::string& base) {
  v1::ListOverlaysRequest req;
  req.set_base(ExportResourceName(base));
  return CallAndPrint<v1::OverlayService>(
      g, &v1::OverlayService::Stub::ListOverlays, req,
      [](const v1::ListOverlaysResponse& out) {
        std::vector<const v1::Export*> rows;
        for (const v1::Export& e : out.overlays()) rows.push_back(&e);
        PrintTable(rows);
      });
}

}  // namespace

Command AddOverlayCommand(CLI::App& app, const Global& g) {
  CLI::App* overlay = AddSubcommand(
      app, "overlay",
      "Manages copy-on-write overlays (reset, commit, list).\n"
      "An overlay is a file export created with --overlay-of BASE: what\n"
      "its clients write stays in its own file, the rest reads from BASE.");
  // The one argument of each subcommand, shared with its run function.
  auto name = std::make_shared<std::string>();
  std::vector<Command> commands;

  CLI::App* reset =
      AddSubcommand(*overlay, "reset",
                    "Drops an overlay's changes (it reads its base again).\n"
                    "Refused while clients are connected to the overlay.");
  reset->add_option("NAME", *name, "the overlay")->required()->type_name("");
  commands.push_back({reset, [&g, name] { return RunReset(g, *name); }});

  CLI::App* commit = AddSubcommand(
      *overlay, "commit",
      "Writes an overlay's changes into its base export, then resets it.\n"
      "The base must be an export created writable; refused while another\n"
      "overlay of the same base has clients connected.");
  commit->add_option("NAME", *name, "the overlay")->required()->type_name("");
  commands.push_back({commit, [&g, name] { return RunCommit(g, *name); }});

  CLI::App* list =
      AddSubcommand(*overlay, "list", "Lists the overlays of a base export.");
  list->add_option("BASE", *name, "the base export")->required()->type_name("");
  commands.push_back({list, [&g, name] { return RunList(g, *name); }});

  return GroupCommand(overlay, std::move(commands));
}

}  // namespace nbdmgr::cli
