#ifndef NBDMGR_LIB_DAEMON_CONFIG_FILE_H_
#define NBDMGR_LIB_DAEMON_CONFIG_FILE_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/export/export_config.h"

namespace nbdmgr {

// A config file, as the flags it stands for (so file and command line are
// validated by the same code) plus its exports.
struct ConfigFileContents {
  std::vector<std::pair<std::string, std::string>> flags;  // {"--flag", value}
  std::vector<ExportConfig> exports;
};

// Parses `text`, the protobuf text format of nbdmgr.v1.DaemonConfig.
// InvalidArgument naming `path` and the line and column of a syntax error,
// or the export at fault.
absl::StatusOr<ConfigFileContents> ParseConfigFile(const std::string& path,
                                                   const std::string& text);
// Reads and parses `path`; InvalidArgument naming it if unreadable.
absl::StatusOr<ConfigFileContents> LoadConfigFile(const std::string& path);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_DAEMON_CONFIG_FILE_H_
