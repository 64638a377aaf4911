// nbdctl qos-group create | list | get | update | delete.

#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/qos_flags.h"
#include "lib/convert/proto_convert.h"
#include "nbdmgr/v1/qos.grpc.pb.h"

namespace nbdmgr::cli {
namespace {

// The arguments of every qos-group command; each uses some.
struct QosGroupArgs {
  std::string name;
  QosFlags limits;
};

void PrintTable(const std::vector<const v1::QosGroup*>& groups) {
  std::printf("%-24s %-7s %7s %10s %10s %7s  %s\n", "NAME", "SOURCE", "EXPORTS",
              "THROTTLED", "WAITED s", "WAITING", "LIMITS");
  for (const v1::QosGroup* g : groups) {
    std::printf("%-24s %-7s %7d %10llu %10.3f %7llu  %s\n",
                ResourceId(g->name()).c_str(),
                g->persistent() ? "api" : "daemon", g->exports_size(),
                static_cast<unsigned long long>(g->throttled_requests()),
                g->throttled_seconds(),
                static_cast<unsigned long long>(g->waiting_requests()),
                QosLimitsText(g->limits()).c_str());
  }
  for (const v1::QosGroup* g : groups) {
    if (g->exports().empty()) continue;
    std::vector<std::string> ids;
    for (const std::string& e : g->exports()) ids.push_back(ResourceId(e));
    std::printf("%s: exports %s\n", ResourceId(g->name()).c_str(),
                absl::StrJoin(ids, ", ").c_str());
  }
}

void PrintOne(const v1::QosGroup& g) { PrintTable({&g}); }

int RunCreate(const Global& g, const QosGroupArgs& a, const CLI::App& cmd) {
  v1::CreateQosGroupRequest req;
  req.set_qos_group_id(a.name);
  std::vector<std::string> paths;
  if (std::string m =
          ApplyQosFlags(a.limits, "limits",
                        req.mutable_qos_group()->mutable_limits(), &paths);
      !m.empty()) {
    return UsageError(m, HelpOf(cmd));
  }
  return CallAndPrint<v1::QosService>(g, &v1::QosService::Stub::CreateQosGroup,
                                      req, PrintOne);
}

int RunList(const Global& g) {
  return CallAndPrint<v1::QosService>(
      g, &v1::QosService::Stub::ListQosGroups, v1::ListQosGroupsRequest(),
      [](const v1::ListQosGroupsResponse& out) {
        std::vector<const v1::QosGroup*> rows;
        for (const v1::QosGroup& q : out.qos_groups()) rows.push_back(&q);
        PrintTable(rows);
      });
}

int RunGet(const Global& g, const QosGroupArgs& a) {
  v1::GetQosGroupRequest req;
  req.set_name(QosGroupResourceName(a.name));
  return CallAndPrint<v1::QosService>(g, &v1::QosService::Stub::GetQosGroup,
                                      req, PrintOne);
}

int RunUpdate(const Global& g, const QosGroupArgs& a, const CLI::App& cmd) {
  v1::UpdateQosGroupRequest req;
  req.mutable_qos_group()->set_name(QosGroupResourceName(a.name));
  std::vector<std::string> paths;
  if (std::string m =
          ApplyQosFlags(a.limits, "limits",
                        req.mutable_qos_group()->mutable_limits(), &paths);
      !m.empty()) {
    return UsageError(m, HelpOf(cmd));
  }
  if (paths.empty()) return UsageError("nothing to update", HelpOf(cmd));
  for (const std::string& p : paths) req.mutable_update_mask()->add_paths(p);
  return CallAndPrint<v1::QosService>(g, &v1::QosService::Stub::UpdateQosGroup,
                                      req, PrintOne);
}

int RunDelete(const Global& g, const QosGroupArgs& a) {
  v1::DeleteQosGroupRequest req;
  req.set_name(QosGroupResourceName(a.name));
  return CallAndPrint<v1::QosService>(
      g, &v1::QosService::Stub::DeleteQosGroup, req,
      [&a](const v1::DeleteQosGroupResponse&) {
        std::printf("deleted QoS group %s\n", a.name.c_str());
      });
}

void AddNameArgument(CLI::App* cmd, QosGroupArgs* a) {
  cmd->add_option("NAME", a->name,
                  "the group's name: letters, digits and . _ : -")
      ->required()
      ->type_name("");
}

}  // namespace

Command AddQosGroupCommand(CLI::App& app, const Global& g) {
  CLI::App* group = AddSubcommand(
      app, "qos-group",
      "Manages QoS groups: limits exports share (create, list, ...).\n"
      "The exports in a group (create or update them with --qos-group\n"
      "NAME) stay within the group's limits together, on top of their own.\n"
      "Requests beyond a limit wait, in arrival order; none fail.");
  // Each subcommand's arguments, shared with its run function.
  auto a = std::make_shared<QosGroupArgs>();
  std::vector<Command> commands;

  CLI::App* create = AddSubcommand(
      *group, "create",
      "Creates a QoS group with the limits given (none: no limits yet).\n"
      "It is persisted in the daemon's state directory.");
  AddNameArgument(create, a.get());
  AddQosFlags(create, &a->limits);
  commands.push_back(
      {create, [&g, a, create] { return RunCreate(g, *a, *create); }});

  CLI::App* list = AddSubcommand(*group, "list", "Lists the QoS groups.");
  commands.push_back({list, [&g] { return RunList(g); }});

  CLI::App* get = AddSubcommand(*group, "get", "Shows one QoS group.");
  AddNameArgument(get, a.get());
  commands.push_back({get, [&g, a] { return RunGet(g, *a); }});

  CLI::App* update = AddSubcommand(
      *group, "update",
      "Changes a QoS group's limits, at once.\n"
      "A limit flag changes that number only (--iops 5000 keeps\n"
      "--iops-burst and the bandwidth limits; --iops 0 removes the limit).\n"
      "Changes to a group given to nbdmgrd (--qos-group, the config file)\n"
      "last until it stops.");
  AddNameArgument(update, a.get());
  AddQosFlags(update, &a->limits);
  commands.push_back(
      {update, [&g, a, update] { return RunUpdate(g, *a, *update); }});

  CLI::App* del = AddSubcommand(
      *group, "delete",
      "Deletes a QoS group.\n"
      "Refused while exports name it: move them out first (nbdctl update\n"
      "EXPORT --qos-group \"\").");
  AddNameArgument(del, a.get());
  commands.push_back({del, [&g, a] { return RunDelete(g, *a); }});

  return GroupCommand(group, std::move(commands));
}

}  // namespace nbdmgr::cli
