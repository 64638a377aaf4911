#include "lib/nbd/validation.h"

namespace nbdmgr::nbd {

RequestCheck ValidateRequest(const RequestHeader& h, const RequestLimits& l) {
  switch (h.type) {
    case kCmdRead:
    case kCmdWrite:
    case kCmdFlush:
    case kCmdTrim:
    case kCmdCache:
    case kCmdWriteZeroes:
    case kCmdBlockStatus:
      break;
    default:
      return {kEinval, "unknown command"};
  }
  uint16_t allowed = 0;
  if (l.tx_flags & kTxSendFua) allowed |= kCmdFlagFua;
  switch (h.type) {
    case kCmdRead:
      if (l.structured_replies) allowed |= kCmdFlagDf;
      break;
    case kCmdWriteZeroes:
      allowed |= kCmdFlagNoHole;
      if (l.tx_flags & kTxSendFastZero) allowed |= kCmdFlagFastZero;
      break;
    case kCmdBlockStatus:
      allowed |= kCmdFlagReqOne;
      break;
  }
  if (h.flags & ~allowed) return {kEinval, "flag not valid for this command"};
  const bool writes =
      h.type == kCmdWrite || h.type == kCmdTrim || h.type == kCmdWriteZeroes;
  if (writes && (l.tx_flags & kTxReadOnly)) {
    return {kEperm, "export is read-only"};
  }
  if (h.type == kCmdFlush) return {};
  if (h.length == 0) return {kEinval, "zero-length request"};
  // The NBD spec bounds READ, WRITE and CACHE by the advertised maximum
  // block size and asks for EINVAL above it (a CACHE prefetches what a READ
  // of it would read); TRIM and WRITE_ZEROES may be longer.
  const bool sized =
      h.type == kCmdRead || h.type == kCmdWrite || h.type == kCmdCache;
  if (sized && h.length > l.max_payload) {
    return {kEinval, "request longer than the maximum payload"};
  }
  if (h.offset > l.export_size || h.length > l.export_size - h.offset) {
    return {
        h.type == kCmdWrite || h.type == kCmdWriteZeroes ? kEnospc : kEinval,
        "request past the end of the export"};
  }
  if (sized && l.min_block > 1 &&
      (h.offset % l.min_block != 0 || h.length % l.min_block != 0)) {
    return {kEinval, "not aligned to the minimum block size"};
  }
  if (h.type == kCmdBlockStatus && !l.meta_context) {
    return {kEinval, "no metadata context negotiated"};
  }
  return {};
}

}  // namespace nbdmgr::nbd
