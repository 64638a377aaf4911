#ifndef NBDMGR_LIB_UTIL_DURATION_H_
#define NBDMGR_LIB_UTIL_DURATION_H_

#include <chrono>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace nbdmgr {

// The longest duration any flag or field takes (about 100 years): a
// deadline of now + it still fits a nanosecond clock.
inline constexpr std::chrono::milliseconds kMaxDuration{int64_t{100} * 365 *
                                                        86400 * 1000};

// Parses "250ms", "30s", "5m", "1h" (one number, one unit; "0" alone is
// allowed), at most kMaxDuration. InvalidArgument naming the input
// otherwise.
absl::StatusOr<std::chrono::milliseconds> ParseDuration(std::string_view text);

// "30s", "250ms", "5m".
std::string FormatDuration(std::chrono::milliseconds d);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_UTIL_DURATION_H_
