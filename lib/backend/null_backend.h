#ifndef NBDMGR_LIB_BACKEND_NULL_BACKEND_H_
#define NBDMGR_LIB_BACKEND_NULL_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "lib/backend/backend.h"

namespace nbdmgr {

// Reads zeroes, discards writes; reports the whole device as a zero hole;
// CACHE is answered at once. For benchmarks of the protocol path. Thread-safe
// (stateless).
class NullBackend final : public Backend {
 public:
  // InvalidArgument if size is 0.
  static absl::StatusOr<std::unique_ptr<NullBackend>> Create(uint64_t size);

  uint64_t size() const override { return size_; }
  BackendCaps caps() const override;
  absl::Status Read(uint64_t offset, std::span<uint8_t> buf) override;
  // Lends ZeroBytes().
  absl::Status ReadPinned(
      uint64_t offset, uint64_t length,
      absl::FunctionRef<void(std::span<const uint8_t>, Pin*)> piece) override;
  absl::Status Write(uint64_t offset, std::span<const uint8_t> data,
                     bool fua) override;
  absl::Status Flush() override { return absl::OkStatus(); }
  absl::Status Trim(uint64_t, uint64_t, bool) override {
    return absl::OkStatus();
  }
  absl::Status Zero(uint64_t, uint64_t, ZeroOptions) override {
    return absl::OkStatus();
  }
  absl::Status Extents(uint64_t offset, uint64_t length,
                       absl::FunctionRef<bool(Extent)> visit) override;

 private:
  explicit NullBackend(uint64_t size) : size_(size) {}
  const uint64_t size_;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BACKEND_NULL_BACKEND_H_
