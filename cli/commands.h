#ifndef NBDMGR_CLI_COMMANDS_H_
#define NBDMGR_CLI_COMMANDS_H_

#include <string>
#include <vector>

#include "cli/client.h"

namespace nbdmgr::cli {

// Each returns the process exit code.
int CreateCommand(const Global& g, const std::vector<std::string>& words);
int ListCommand(const Global& g, const std::vector<std::string>& words);
int GetCommand(const Global& g, const std::vector<std::string>& words);
int UpdateCommand(const Global& g, const std::vector<std::string>& words);
int RemoveCommand(const Global& g, const std::vector<std::string>& words);
int DaemonCommand(const Global& g, const std::vector<std::string>& words);
int StatsCommand(const Global& g, const std::vector<std::string>& words);
int HealthCommand(const Global& g, const std::vector<std::string>& words);

}  // namespace nbdmgr::cli

#endif  // NBDMGR_CLI_COMMANDS_H_
