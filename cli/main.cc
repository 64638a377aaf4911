// nbdctl: the operator CLI over nbdmgrd's gRPC control API.

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"

namespace {

constexpr char kHelp[] =
    R"(Usage: nbdctl [--control ADDR] [-o table|json] COMMAND [ARGS]

Manages a running nbdmgrd over its control API.

Commands:
  create NAME ...   create an export (--memory/--null SIZE or --file PATH)
  list              list exports
  get NAME          show one export
  update NAME ...   change buffer strategy, memory cap, description
  remove NAME       remove an export (--mode safe|drain|hard)
  daemon            show the daemon; --memory-cap SIZE changes its cap
  stats [NAME]      I/O rates, latency, buffers (-o table|json|prometheus,
                    --watch 1s)
  health [SERVICE]  gRPC health check (exit 0 if SERVING; for probes)

Global flags:
  --control ADDR    unix:/PATH or tcp:HOST:PORT
                    (default unix:/run/nbdmgr/control.sock)
  -o, --output F    table (default) or json
  --tls-ca FILE, --tls-cert FILE, --tls-key FILE
                    TLS for a TCP control address (cert/key: mutual TLS)
  --insecure        TCP without TLS

Exit codes: 0 ok, 1 the daemon returned an error (code and message on
stderr), 2 bad command line, 3 daemon unreachable.
Run 'nbdctl COMMAND --help' for a command's flags.
)";

}  // namespace

int main(int argc, char** argv) {
  using namespace nbdmgr::cli;
  Global g;
  std::vector<std::string> words(argv + 1, argv + argc);
  size_t i = 0;
  // Global flags come before the command.
  for (; i < words.size() && words[i].starts_with("-"); ++i) {
    std::string w = words[i], value;
    bool inline_value = false;
    if (size_t eq = w.find('='); eq != std::string::npos) {
      value = w.substr(eq + 1);
      w = w.substr(0, eq);
      inline_value = true;
    }
    if (w == "--help" || w == "-h") return std::printf("%s", kHelp), kExitOk;
    if (w == "--version")
      return std::printf("nbdctl %s\n", NBDMGR_VERSION), kExitOk;
    if (w == "--insecure") {
      g.insecure = true;
      continue;
    }
    static const std::map<std::string, std::string*> kValued = {
        {"--control", &g.control},   {"-o", &g.output},
        {"--output", &g.output},     {"--tls-ca", &g.tls_ca},
        {"--tls-cert", &g.tls_cert}, {"--tls-key", &g.tls_key}};
    auto it = kValued.find(w);
    if (it == kValued.end()) return UsageError("unknown flag " + w, kHelp);
    if (!inline_value) {
      if (i + 1 >= words.size())
        return UsageError(w + ": missing value", kHelp);
      value = words[++i];
    }
    *it->second = value;
  }
  if (i >= words.size()) return UsageError("missing command", kHelp);
  std::string cmd = words[i];
  if (g.output != "table" && g.output != "json" &&
      !(cmd == "stats" && g.output == "prometheus")) {
    return UsageError("-o must be table or json (or prometheus for stats)",
                      kHelp);
  }
  std::vector<std::string> rest(words.begin() + static_cast<long>(i) + 1,
                                words.end());
  if (cmd == "create") return CreateCommand(g, rest);
  if (cmd == "list") return ListCommand(g, rest);
  if (cmd == "get") return GetCommand(g, rest);
  if (cmd == "update") return UpdateCommand(g, rest);
  if (cmd == "remove") return RemoveCommand(g, rest);
  if (cmd == "daemon") return DaemonCommand(g, rest);
  if (cmd == "stats") return StatsCommand(g, rest);
  if (cmd == "health") return HealthCommand(g, rest);
  if (cmd == "help") return std::printf("%s", kHelp), kExitOk;
  return UsageError("unknown command " + cmd, kHelp);
}
