#ifndef NBDMGR_LIB_UTIL_ERRORS_H_
#define NBDMGR_LIB_UTIL_ERRORS_H_

#include <string_view>

#include "absl/status/status.h"

namespace nbdmgr {

// Builds a Status from an errno value: the code follows
// absl::ErrnoToStatusCode (ENOSPC -> ResourceExhausted, EPERM ->
// PermissionDenied, ...) and the message is "<what>: <strerror>".
absl::Status ErrnoStatus(int error_number, std::string_view what);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_UTIL_ERRORS_H_
