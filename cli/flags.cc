#include "cli/flags.h"

#include <sstream>

#include "absl/strings/str_cat.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "lib/util/size.h"

namespace nbdmgr::cli {
namespace {

constexpr char kSubcommandFooter[] =
    R"(Global flags (--control ADDR, -o/--output F, --tls-ca/--tls-cert/--tls-key FILE,
--insecure) go before or after the command; see 'nbdctl --help'.)";

// CLI11 prints the description above the usage line; nbdctl puts it below.
// A command list shows the first line of each command's description.
class HelpFormatter : public CLI::Formatter {
 public:
  std::string make_description(const CLI::App*) const override { return ""; }
  std::string make_subcommand(const CLI::App* sub) const override {
    const std::string& d = sub->get_description();
    std::stringstream out;
    CLI::detail::format_help(out, sub->get_name(), d.substr(0, d.find('\n')),
                             get_column_width());
    return out.str();
  }
  std::string make_usage(const CLI::App* app, std::string name) const override {
    std::string description = Formatter::make_description(app);
    std::string usage = Formatter::make_usage(app, std::move(name));
    return description.empty() ? usage : usage + "\n" + description;
  }
};

}  // namespace

std::shared_ptr<CLI::Formatter> MakeHelpFormatter() {
  auto f = std::make_shared<HelpFormatter>();
  f->column_width(28);
  f->label("OPTIONS", "FLAGS");
  f->label("SUBCOMMAND", "COMMAND");
  f->label("Positionals", "Arguments");
  return f;
}

CLI::App* AddSubcommand(CLI::App& app, const std::string& name,
                        const std::string& description) {
  CLI::App* cmd = app.add_subcommand(name, description);
  cmd->group("Commands");
  cmd->option_defaults()->group("Flags");
  cmd->get_help_ptr()->group("Flags");
  cmd->footer(kSubcommandFooter);
  return cmd;
}

CLI::Option* AddOptional(CLI::App* cmd, const std::string& flag,
                         const std::string& type,
                         std::optional<std::string>* out,
                         const std::string& description) {
  return cmd
      ->add_option_function<std::string>(
          flag, [out](const std::string& value) { *out = value; }, description)
      ->type_name(type);
}

absl::StatusOr<uint64_t> SizeFlag(const std::string& flag,
                                  const std::string& value) {
  absl::StatusOr<uint64_t> s = ParseSize(value);
  if (!s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": ", s.status().message()));
  }
  return *s;
}

Command GroupCommand(CLI::App* group, std::vector<Command> commands) {
  group->require_subcommand(1);
  return {group, [commands = std::move(commands)] {
            for (const Command& c : commands) {
              if (c.app->parsed()) return c.run();
            }
            return kExitUsage;  // not reached: a subcommand is required
          }};
}

std::string HelpOf(const CLI::App& cmd) {
  // Not cmd.help(): after parsing, that shows the chosen subcommand's help.
  std::string path = cmd.get_name();
  for (const CLI::App* p = cmd.get_parent(); p != nullptr; p = p->get_parent())
    path = p->get_name() + " " + path;
  return cmd.get_formatter()->make_help(&cmd, path, CLI::AppFormatMode::Normal);
}

}  // namespace nbdmgr::cli
