#include "cli/args.h"

#include "absl/strings/str_cat.h"

namespace nbdmgr::cli {

absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& words,
                               const std::set<std::string>& with_value,
                               const std::set<std::string>& switches) {
  Args a;
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& w = words[i];
    if (w == "--help" || w == "-h") {
      a.help = true;
      continue;
    }
    const bool short_flag =
        w.size() == 2 && w[0] == '-' && with_value.contains(w);  // e.g. -o
    if ((!w.starts_with("--") && !short_flag) || w == "--") {
      a.positional.push_back(w);
      continue;
    }
    std::string flag = w, value;
    bool inline_value = false;
    if (size_t eq = w.find('='); eq != std::string::npos) {
      flag = w.substr(0, eq);
      value = w.substr(eq + 1);
      inline_value = true;
    }
    if (switches.contains(flag) && !inline_value) {
      a.switches.insert(flag);
    } else if (with_value.contains(flag)) {
      if (!inline_value) {
        if (i + 1 >= words.size()) {
          return absl::InvalidArgumentError(
              absl::StrCat(flag, ": missing value"));
        }
        value = words[++i];
      }
      a.values[flag] = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", flag));
    }
  }
  return a;
}

}  // namespace nbdmgr::cli
