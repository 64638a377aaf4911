#include "lib/nbd/errors.h"

#include "lib/nbd/wire.h"

namespace nbdmgr::nbd {

uint32_t NbdErrorFromStatus(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return kOk;
    case absl::StatusCode::kResourceExhausted:
      return kEnospc;
    case absl::StatusCode::kPermissionDenied:
      return kEperm;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return kEinval;
    case absl::StatusCode::kUnimplemented:
      return kEnotsup;
    case absl::StatusCode::kUnavailable:
      return kEshutdown;
    default:
      return kEio;
  }
}

IoOp IoOpOfCommand(uint16_t type) {
  switch (type) {
    case kCmdRead:
      return IoOp::kRead;
    case kCmdWrite:
      return IoOp::kWrite;
    case kCmdFlush:
      return IoOp::kFlush;
    case kCmdTrim:
      return IoOp::kTrim;
    case kCmdWriteZeroes:
      return IoOp::kWriteZeroes;
    case kCmdCache:
      return IoOp::kCache;
    case kCmdBlockStatus:
      return IoOp::kBlockStatus;
    default:
      return IoOp::kOther;
  }
}

IoResult IoResultOfError(uint32_t nbd_error) {
  switch (nbd_error) {
    case kOk:
      return IoResult::kOk;
    case kEperm:
      return IoResult::kEperm;
    case kEio:
      return IoResult::kEio;
    case kEnomem:
      return IoResult::kEnomem;
    case kEinval:
      return IoResult::kEinval;
    case kEnospc:
      return IoResult::kEnospc;
    case kEoverflow:
      return IoResult::kEoverflow;
    case kEnotsup:
      return IoResult::kEnotsup;
    case kEshutdown:
      return IoResult::kEshutdown;
    default:
      return IoResult::kOtherError;
  }
}

}  // namespace nbdmgr::nbd
