#ifndef NBDMGR_LIB_BACKEND_FAULT_BACKEND_H_
#define NBDMGR_LIB_BACKEND_FAULT_BACKEND_H_

#include <array>
#include <chrono>
#include <memory>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "lib/backend/backend.h"
#include "lib/util/mutex.h"

namespace nbdmgr {

// A backend decorator that fails or delays calls on command, to test how
// the NBD layer turns backend failures into error replies (fault injection
// for tests and drills). It reports itself as blocking, so its calls run on
// the blocking pool and a delay never stalls a network thread, and without
// zero-copy reads, so every READ goes through Read() and its faults
// (ReadPinned is not forwarded). Thread-safe:
// faults can be armed from any thread while clients are connected.
class FaultBackend final : public Backend {
 public:
  enum class Op { kRead, kWrite, kFlush, kTrim, kZero, kCache, kExtents };
  static constexpr size_t kNumOps = 7;

  explicit FaultBackend(std::unique_ptr<Backend> inner);

  // The next `count` calls of `op` return `error` without reaching the
  // inner backend (count < 0: every call until Clear()).
  void Fail(Op op, absl::Status error, int count = 1);
  // The next `count` calls of `op` throw std::runtime_error (a backend bug
  // or std::bad_alloc, as the NBD layer must survive it).
  void Throw(Op op, int count = 1);
  // Every call of `op` first sleeps `delay` (zero: no delay).
  void Delay(Op op, std::chrono::milliseconds delay);
  // Removes every armed fault and delay.
  void Clear();
  // Calls of `op` that failed because of an armed fault.
  int injected(Op op) const;

  uint64_t size() const override { return inner_->size(); }
  BackendCaps caps() const override;
  absl::Status Read(uint64_t offset, std::span<uint8_t> buf) override;
  absl::Status Write(uint64_t offset, std::span<const uint8_t> data,
                     bool fua) override;
  absl::Status Flush() override;
  absl::Status Trim(uint64_t offset, uint64_t length, bool fua) override;
  absl::Status Zero(uint64_t offset, uint64_t length,
                    ZeroOptions options) override;
  absl::Status Cache(uint64_t offset, uint64_t length) override;
  absl::Status Extents(uint64_t offset, uint64_t length,
                       absl::FunctionRef<bool(Extent)> visit) override;
  // Armed like Extents() (Op::kExtents).
  absl::Status ReadExtents(uint64_t offset, uint64_t length,
                           absl::FunctionRef<bool(Extent)> visit) override;

 private:
  struct Armed {
    absl::Status error;
    int remaining = 0;  // < 0: until cleared
    std::chrono::milliseconds delay{0};
    int injected = 0;
    int throws = 0;
  };
  // Applies the delay of `op`, then returns its armed error or OK.
  absl::Status Check(Op op);

  const std::unique_ptr<Backend> inner_;
  mutable Mutex mu_;
  std::array<Armed, kNumOps> armed_ ABSL_GUARDED_BY(mu_);
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BACKEND_FAULT_BACKEND_H_
