#ifndef NBDMGR_CLI_FLAGS_H_
#define NBDMGR_CLI_FLAGS_H_

// CLI11 (Debian libcli11-dev 2.1.2, header-only) compiles without warnings
// under -Wall -Wextra with GCC 12 and clang 14, so it needs no pragmas; its
// CMake target (CLI11::CLI11) is imported, so its include directory is a
// SYSTEM one anyway.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace nbdmgr::cli {

// nbdctl's help layout: the usage line first, then the description (as GNU
// tools and the old hand-written help did; help2man reads the synopsis from
// that first line), FLAGS and COMMAND in the usage line.
std::shared_ptr<CLI::Formatter> MakeHelpFormatter();

// Adds the subcommand `name` to `app` (which must already use
// MakeHelpFormatter) with its flags listed under "Flags" and a footer naming
// the global flags, which the subcommand accepts through fallthrough to
// `app`. Returns the subcommand, owned by `app`.
CLI::App* AddSubcommand(CLI::App& app, const std::string& name,
                        const std::string& description);

// Adds "--flag VALUE" to `cmd`, shown as "--flag TYPE". Parsing sets *out only
// if the flag is given; `out` must outlive parsing. Returns the option, owned
// by `cmd`.
CLI::Option* AddOptional(CLI::App* cmd, const std::string& flag,
                         const std::string& type,
                         std::optional<std::string>* out,
                         const std::string& description);

// The byte count `value` of `flag` (ParseSize: "64KiB", "1GiB", "4096");
// InvalidArgument naming the flag.
absl::StatusOr<uint64_t> SizeFlag(const std::string& flag,
                                  const std::string& value);

// The help `nbdctl [COMMAND] --help` prints for `cmd` (the app or one of its
// subcommands).
std::string HelpOf(const CLI::App& cmd);

}  // namespace nbdmgr::cli

#endif  // NBDMGR_CLI_FLAGS_H_
