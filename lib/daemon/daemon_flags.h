#ifndef NBDMGR_LIB_DAEMON_DAEMON_FLAGS_H_
#define NBDMGR_LIB_DAEMON_DAEMON_FLAGS_H_

#include <string>

#include "absl/status/statusor.h"
#include "lib/daemon/daemon_config.h"

namespace nbdmgr {

// The outcome of parsing the command line.
struct DaemonFlags {
  DaemonConfig config;      // unset if help or version
  std::string config_file;  // --config, if given
  bool help = false;
  bool version = false;
  bool check_config = false;  // --check-config
};

// Parses nbdmgrd's arguments (argv[0] is skipped) and, with --config FILE,
// the file: the file first, then the command line over it. A flag replaces
// the file's value of its field; --nbd-listen and --allow-path replace the
// file's lists; --export adds exports after the file's. Then the result is
// checked once (DaemonConfigFromMerged). Flags take their value as
// "--flag value" or "--flag=value"; a flag given twice keeps its last value
// (the list flags keep all). InvalidArgument naming the flag (or the file
// and field) for unknown flags, stray arguments, missing or bad values, and
// anything DaemonConfigFromMerged refuses. With --help or --version nothing
// else is checked.
absl::StatusOr<DaemonFlags> ParseDaemonFlags(int argc, const char* const* argv);

// The --help text.
std::string DaemonUsage();

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_DAEMON_DAEMON_FLAGS_H_
