#ifndef NBDMGR_LIB_UTIL_SIZE_H_
#define NBDMGR_LIB_UTIL_SIZE_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace nbdmgr {

// Parses a byte count such as "4096", "64KiB", "1.5GiB", "10G" or "512B".
// Binary suffixes (KiB/MiB/GiB/TiB/PiB, or the short K/M/G/T/P) multiply by
// powers of 1024; decimal suffixes (kB/MB/GB/TB) by powers of 1000.
// Returns InvalidArgument naming the input for anything else, for negative
// numbers, and for values that do not fit in 64 bits.
absl::StatusOr<uint64_t> ParseSize(std::string_view text);

// Formats a byte count for people: "1GiB", "1.5MiB", "4096B".
std::string FormatSize(uint64_t bytes);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_UTIL_SIZE_H_
