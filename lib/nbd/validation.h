#ifndef NBDMGR_LIB_NBD_VALIDATION_H_
#define NBDMGR_LIB_NBD_VALIDATION_H_

#include <cstdint>
#include <string_view>

#include "lib/nbd/wire.h"

namespace nbdmgr::nbd {

// What a request is checked against: the export and what this client
// negotiated.
struct RequestLimits {
  uint64_t export_size = 0;
  uint16_t tx_flags = 0;  // as advertised to this client
  bool structured_replies = false;
  bool meta_context = false;  // SET_META_CONTEXT selected one or more
  uint32_t max_payload = 32 * 1024 * 1024;
  uint32_t min_block = 1;  // READ/WRITE/CACHE offset and length must be
                           // multiples
};

// The verdict on one request: error is kOk or the NBD error to reply with;
// message says why (for logs and structured error chunks).
struct RequestCheck {
  uint32_t error = kOk;
  std::string_view message;
};

// The one check of a request, made after its header is read and before
// anything is allocated or read for it; code below it (handlers, backends)
// may assume what it checked: known command, flags valid for that command
// and advertised, writes on a read-only export (EPERM), zero length
// (EINVAL), READ/WRITE/CACHE longer than the maximum payload (EINVAL), range
// past the end (ENOSPC for writes, EINVAL otherwise), READ/WRITE/CACHE not
// aligned to the minimum block size (EINVAL), BLOCK_STATUS without a
// negotiated context (EINVAL). CACHE is allowed on read-only exports.
// DISC is not checked here.
RequestCheck ValidateRequest(const RequestHeader& h, const RequestLimits& l);

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_VALIDATION_H_
