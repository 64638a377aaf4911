#ifndef NBDMGR_CLI_ARGS_H_
#define NBDMGR_CLI_ARGS_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace nbdmgr::cli {

// Parsed command-line words of one subcommand: positional arguments and
// --flags ("--flag value", "--flag=value"; switches take no value).
struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> values;
  std::set<std::string> switches;
  bool help = false;

  bool has(const std::string& flag) const {
    return values.contains(flag) || switches.contains(flag);
  }
  std::string get(const std::string& flag, const std::string& def = "") const {
    auto it = values.find(flag);
    return it == values.end() ? def : it->second;
  }
};

// `with_value` and `switches` list the flags this subcommand accepts.
// InvalidArgument naming an unknown flag or a missing value.
absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& words,
                               const std::set<std::string>& with_value,
                               const std::set<std::string>& switches);

}  // namespace nbdmgr::cli

#endif  // NBDMGR_CLI_ARGS_H_
