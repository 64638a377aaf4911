#ifndef NBDMGR_CLI_COMMANDS_H_
#define NBDMGR_CLI_COMMANDS_H_

#include <functional>
#include <vector>

#include "cli/client.h"

namespace CLI {
class App;
}  // namespace CLI

namespace nbdmgr::cli {

// One nbdctl subcommand, registered on the CLI11 app before parsing.
struct Command {
  CLI::App* app;  // the subcommand; owned by the app it was added to
  // Runs the subcommand with the flags parsing stored; returns the process
  // exit code. Call only after a successful parse that chose `app`.
  std::function<int()> run;
};

// A command that groups subcommands (`bitmap`, `overlay`, `qos-group`): `group`
// requires one of `commands` (its subcommands), and the run returned runs
// the one parsed.
Command GroupCommand(CLI::App* group, std::vector<Command> commands);

// Each adds one subcommand to `app` (set up with MakeHelpFormatter). Its
// flags are bound to state owned by the returned Command; `g` is read when
// the command runs and must outlive it.
Command AddCreateCommand(CLI::App& app, const Global& g);
Command AddListCommand(CLI::App& app, const Global& g);
Command AddGetCommand(CLI::App& app, const Global& g);
Command AddUpdateCommand(CLI::App& app, const Global& g);
Command AddRemoveCommand(CLI::App& app, const Global& g);
// `bitmap` and its subcommands (add, list, clear, remove, checkpoint); its
// run runs the one parsed.
Command AddBitmapCommand(CLI::App& app, const Global& g);
// `overlay` and its subcommands (reset, commit, list).
Command AddOverlayCommand(CLI::App& app, const Global& g);
// `qos-group` and its subcommands (create, list, get, update, delete).
Command AddQosGroupCommand(CLI::App& app, const Global& g);
Command AddDaemonCommand(CLI::App& app, const Global& g);
Command AddStatsCommand(CLI::App& app, const Global& g);
Command AddHealthCommand(CLI::App& app, const Global& g);

}  // namespace nbdmgr::cli

#endif  // NBDMGR_CLI_COMMANDS_H_
