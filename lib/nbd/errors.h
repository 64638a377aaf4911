#ifndef NBDMGR_LIB_NBD_ERRORS_H_
#define NBDMGR_LIB_NBD_ERRORS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "lib/metrics/io_stats.h"

namespace nbdmgr::nbd {

// The one mapping from a backend's error to the NBD error the client gets
// (backend.h states what each code means there): ResourceExhausted ->
// ENOSPC, PermissionDenied -> EPERM, InvalidArgument and OutOfRange ->
// EINVAL, Unimplemented -> ENOTSUP, Unavailable -> ESHUTDOWN, anything
// else -> EIO; OK -> kOk.
uint32_t NbdErrorFromStatus(const absl::Status& status);

// The counters' view of a command and of an NBD error code (kOther and
// kOtherError for what they do not know).
IoOp IoOpOfCommand(uint16_t type);
IoResult IoResultOfError(uint32_t nbd_error);

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_ERRORS_H_
