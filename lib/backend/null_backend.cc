#include "lib/backend/null_backend.h"

#include <algorithm>
#include <cstring>

namespace nbdmgr {

absl::StatusOr<std::unique_ptr<NullBackend>> NullBackend::Create(
    uint64_t size) {
  if (size == 0)
    return absl::InvalidArgumentError("null export size must be > 0");
  return std::unique_ptr<NullBackend>(new NullBackend(size));
}

BackendCaps NullBackend::caps() const {
  BackendCaps c;
  c.can_trim = true;
  c.can_zero = true;
  c.can_fast_zero = true;
  c.can_multi_conn = true;
  c.can_extents = true;
  c.can_cache = true;  // nothing to prefetch: answered at once, inline
  c.zero_copy_read = true;
  return c;
}

absl::Status NullBackend::Read(uint64_t, std::span<uint8_t> buf) {
  std::memset(buf.data(), 0, buf.size());
  return absl::OkStatus();
}

absl::Status NullBackend::ReadPinned(
    uint64_t, uint64_t length,
    absl::FunctionRef<void(std::span<const uint8_t>, Pin*)> piece) {
  for (uint64_t done = 0; done < length;) {
    std::span<const uint8_t> zeros = ZeroBytes().first(
        std::min<uint64_t>(length - done, ZeroBytes().size()));
    piece(zeros, nullptr);
    done += zeros.size();
  }
  return absl::OkStatus();
}

absl::Status NullBackend::Write(uint64_t, std::span<const uint8_t>, bool) {
  return absl::OkStatus();
}

absl::Status NullBackend::Extents(uint64_t, uint64_t length,
                                  absl::FunctionRef<bool(Extent)> visit) {
  visit(Extent{length, kExtentHole | kExtentZero});
  return absl::OkStatus();
}

}  // namespace nbdmgr
