// nbdctl: the operator CLI over nbdmgrd's gRPC control API.

#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/flags.h"

namespace nbdmgr::cli {
namespace {

constexpr char kDescription[] =
    R"(Manages a running nbdmgrd over its control API.
Global flags go anywhere on the line, before or after the command:
'nbdctl list -o json' is 'nbdctl -o json list'.)";

constexpr char kFooter[] =
    R"(Exit codes: 0 ok, 1 the daemon returned an error (code and message on
stderr), 2 bad command line, 3 UNAVAILABLE: the daemon, or the storage
the call needs (a Ceph cluster), could not be reached; retry later.
Run 'nbdctl COMMAND --help' for a command's flags.)";

// Binds the global flags to *g. Subcommands fall through to `app` for them,
// so they are accepted anywhere on the line.
void AddGlobalFlags(CLI::App& app, Global* g) {
  // A flag given twice keeps its last value (and subcommands inherit this),
  // as with the hand-written parser: `nbdctl -o json stats -o prometheus`.
  app.option_defaults()->group("Global flags")->take_last();
  app.set_help_flag("-h,--help", "print this help and exit")
      ->group("Global flags");
  app.add_option("--control", g->control,
                 "unix:/PATH or tcp:HOST:PORT\n"
                 "(default unix:/run/nbdmgr/control.sock)")
      ->type_name("ADDR");
  app.add_option("-o,--output", g->output,
                 "table (default) or json; stats also takes\n"
                 "prometheus")
      ->type_name("F");
  app.add_option("--tls-ca", g->tls_ca,
                 "CA certificates for a TCP control address")
      ->type_name("FILE");
  app.add_option("--tls-cert", g->tls_cert,
                 "client certificate (mutual TLS; with --tls-key)")
      ->type_name("FILE");
  app.add_option("--tls-key", g->tls_key, "client private key (mutual TLS)")
      ->type_name("FILE");
  app.add_flag("--insecure", g->insecure, "TCP without TLS");
  app.set_version_flag("--version", std::string("nbdctl ") + NBDMGR_VERSION,
                       "print the version and exit");
}

// Adds every subcommand, and a hidden `help` that prints the tool's help.
std::vector<Command> AddCommands(CLI::App& app, const Global& g) {
  std::vector<Command> commands = {
      AddCreateCommand(app, g),  AddListCommand(app, g),
      AddGetCommand(app, g),     AddUpdateCommand(app, g),
      AddRemoveCommand(app, g),  AddBitmapCommand(app, g),
      AddOverlayCommand(app, g), AddQosGroupCommand(app, g),
      AddDaemonCommand(app, g),  AddStatsCommand(app, g),
      AddHealthCommand(app, g)};
  CLI::App* help = app.add_subcommand("help", "")->group("");
  commands.push_back({help, [&app] {
                        std::printf("%s", HelpOf(app).c_str());
                        return kExitOk;
                      }});
  return commands;
}

// The usage message for a failed parse, naming the word it failed on.
std::string UsageMessage(const CLI::App& app, const CLI::ParseError& e) {
  // The innermost command chosen; it lacks its own command if it has some
  // (`nbdctl`, `nbdctl bitmap`).
  const CLI::App* chosen = &app;
  while (!chosen->get_subcommands().empty()) {
    chosen = chosen->get_subcommands()[0];
  }
  const bool no_command =
      !chosen->get_subcommands([](const CLI::App*) { return true; }).empty();
  const std::string command =
      chosen == &app ? "command" : chosen->get_name() + " command";
  if (dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr ||
      (no_command && dynamic_cast<const CLI::RequiredError*>(&e) != nullptr)) {
    std::vector<std::string> extra = app.remaining(true);
    if (extra.empty()) return "missing " + command;
    if (extra[0].starts_with("-")) return "unknown flag " + extra[0];
    return (no_command ? "unknown " + command + " " : "unexpected argument ") +
           extra[0];
  }
  return e.what();
}

// What a failed parse exits with: 0 after printing help or the version,
// else kExitUsage after printing the error and the help of the command.
int OnParseError(const CLI::App& app, const CLI::ParseError& e) {
  if (dynamic_cast<const CLI::CallForHelp*>(&e) != nullptr ||
      dynamic_cast<const CLI::CallForAllHelp*>(&e) != nullptr) {
    std::printf("%s", app.help().c_str());  // of the command, if one is given
    return kExitOk;
  }
  if (dynamic_cast<const CLI::CallForVersion*>(&e) != nullptr) {
    std::printf("%s\n", e.what());
    return kExitOk;
  }
  return UsageError(UsageMessage(app, e), app.help());
}

}  // namespace
}  // namespace nbdmgr::cli

int main(int argc, char** argv) {
  using namespace nbdmgr::cli;
  Global g;
  CLI::App app(kDescription, "nbdctl");
  app.formatter(MakeHelpFormatter());
  app.fallthrough();  // inherited: subcommands hand global flags to `app`
  app.require_subcommand(1);
  AddGlobalFlags(app, &g);
  const std::vector<Command> commands = AddCommands(app, g);
  app.footer(kFooter);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return OnParseError(app, e);
  }
  // CLI11 reads "-o=json" as the value "=json"; kubectl-style and the old
  // parser take it as "json".
  if (g.output.starts_with('=')) g.output.erase(0, 1);
  for (const Command& c : commands) {
    if (!c.app->parsed()) continue;
    if (g.output != "table" && g.output != "json" &&
        c.app->get_name() != "stats") {
      return UsageError("-o must be table or json (or prometheus for stats)",
                        HelpOf(app));
    }
    return c.run();
  }
  return UsageError("missing command", HelpOf(app));  // not reached
}
