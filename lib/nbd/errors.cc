#include "lib/nbd/errors.h"

#include <cstddef>
#include <utility>

#include "lib/nbd/wire.h"

namespace nbdmgr::nbd {

namespace {

// clang-format off
// The NBD error of each backend error code; anything else is EIO.
constexpr std::pair<absl::StatusCode, uint32_t> kNbdErrorOfCode[] = {
    {absl::StatusCode::kOk, kOk},
    {absl::StatusCode::kResourceExhausted, kEnospc},
    {absl::StatusCode::kPermissionDenied, kEperm},
    {absl::StatusCode::kInvalidArgument, kEinval},
    {absl::StatusCode::kOutOfRange, kEinval},
    {absl::StatusCode::kUnimplemented, kEnotsup},
    {absl::StatusCode::kUnavailable, kEshutdown}};
// The counters' names of commands and of NBD errors; what is not listed is
// kOther / kOtherError.
constexpr std::pair<uint16_t, IoOp> kOpOfCommand[] = {
    {kCmdRead, IoOp::kRead}, {kCmdWrite, IoOp::kWrite},
    {kCmdFlush, IoOp::kFlush}, {kCmdTrim, IoOp::kTrim},
    {kCmdWriteZeroes, IoOp::kWriteZeroes}, {kCmdCache, IoOp::kCache},
    {kCmdBlockStatus, IoOp::kBlockStatus}};
constexpr std::pair<uint32_t, IoResult> kResultOfError[] = {
    {kOk, IoResult::kOk}, {kEperm, IoResult::kEperm}, {kEio, IoResult::kEio},
    {kEnomem, IoResult::kEnomem}, {kEinval, IoResult::kEinval},
    {kEnospc, IoResult::kEnospc}, {kEoverflow, IoResult::kEoverflow},
    {kEnotsup, IoResult::kEnotsup}, {kEshutdown, IoResult::kEshutdown}};
// clang-format on

// The value `key` maps to in `table`, or `otherwise`.
template <typename Key, typename Value, size_t N>
Value Lookup(const std::pair<Key, Value> (&table)[N], Key key,
             Value otherwise) {
  for (const auto& [k, v] : table) {
    if (k == key) return v;
  }
  return otherwise;
}

}  // namespace

uint32_t NbdErrorFromStatus(const absl::Status& status) {
  return Lookup(kNbdErrorOfCode, status.code(), uint32_t{kEio});
}

IoOp IoOpOfCommand(uint16_t type) {
  return Lookup(kOpOfCommand, type, IoOp::kOther);
}

IoResult IoResultOfError(uint32_t nbd_error) {
  return Lookup(kResultOfError, nbd_error, IoResult::kOtherError);
}

}  // namespace nbdmgr::nbd
