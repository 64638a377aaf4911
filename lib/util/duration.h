#ifndef NBDMGR_LIB_UTIL_DURATION_H_
#define NBDMGR_LIB_UTIL_DURATION_H_

#include <chrono>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace nbdmgr {

// Parses "250ms", "30s", "5m", "1h" (one number, one unit; "0" alone is
// allowed). InvalidArgument naming the input otherwise.
absl::StatusOr<std::chrono::milliseconds> ParseDuration(std::string_view text);

// "30s", "250ms", "5m".
std::string FormatDuration(std::chrono::milliseconds d);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_UTIL_DURATION_H_
