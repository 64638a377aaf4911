#ifndef NBDMGR_LIB_DAEMON_CONFIG_FILE_H_
#define NBDMGR_LIB_DAEMON_CONFIG_FILE_H_

#include <string>

#include "absl/status/statusor.h"
#include "nbdmgr/v1/config.pb.h"

namespace nbdmgr {

// Parses `text`, the protobuf text format of nbdmgr.v1.DaemonConfig. Only
// the syntax is checked here: the values are checked once, with the command
// line's, by DaemonConfigFromMerged. InvalidArgument naming `path` and the
// line and column of a syntax error (or an unknown field).
absl::StatusOr<v1::DaemonConfig> ParseConfigFile(const std::string& path,
                                                 const std::string& text);
// Reads and parses `path`; InvalidArgument naming it if unreadable.
absl::StatusOr<v1::DaemonConfig> LoadConfigFile(const std::string& path);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_DAEMON_CONFIG_FILE_H_
