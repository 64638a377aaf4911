#include "lib/backend/fault_backend.h"

#include <stdexcept>
#include <thread>

#include "lib/util/mutex.h"

namespace nbdmgr {

FaultBackend::FaultBackend(std::unique_ptr<Backend> inner)
    : inner_(std::move(inner)) {}

void FaultBackend::Fail(Op op, absl::Status error, int count) {
  MutexLock lock(&mu_);
  Armed& a = armed_[static_cast<size_t>(op)];
  a.error = std::move(error);
  a.remaining = count;
}

void FaultBackend::Throw(Op op, int count) {
  MutexLock lock(&mu_);
  armed_[static_cast<size_t>(op)].throws = count;
}

void FaultBackend::Delay(Op op, std::chrono::milliseconds delay) {
  MutexLock lock(&mu_);
  armed_[static_cast<size_t>(op)].delay = delay;
}

void FaultBackend::Clear() {
  MutexLock lock(&mu_);
  for (Armed& a : armed_) {
    a.error = absl::OkStatus();
    a.remaining = 0;
    a.delay = std::chrono::milliseconds(0);
    a.throws = 0;
  }
}

int FaultBackend::injected(Op op) const {
  MutexLock lock(&mu_);
  return armed_[static_cast<size_t>(op)].injected;
}

BackendCaps FaultBackend::caps() const {
  BackendCaps c = inner_->caps();
  c.blocking = true;         // a delay must not stall a network thread
  c.async = false;           // so every call runs on the pool, faults too
  c.zero_copy_read = false;  // every read goes through Read(), and its faults
  return c;
}

absl::Status FaultBackend::Check(Op op) {
  std::chrono::milliseconds delay;
  absl::Status error;
  bool raise = false;
  {
    MutexLock lock(&mu_);
    Armed& a = armed_[static_cast<size_t>(op)];
    delay = a.delay;
    if (a.throws > 0) {
      --a.throws;
      ++a.injected;
      raise = true;
    } else if (a.remaining != 0 && !a.error.ok()) {
      error = a.error;
      if (a.remaining > 0) --a.remaining;
      ++a.injected;
    }
  }
  if (delay.count() > 0) std::this_thread::sleep_for(delay);
  if (raise) throw std::runtime_error("injected backend exception");
  return error;
}

absl::Status FaultBackend::Read(uint64_t offset, std::span<uint8_t> buf) {
  if (absl::Status st = Check(Op::kRead); !st.ok()) return st;
  return inner_->Read(offset, buf);
}

absl::Status FaultBackend::Write(uint64_t offset, std::span<const uint8_t> data,
                                 bool fua) {
  if (absl::Status st = Check(Op::kWrite); !st.ok()) return st;
  return inner_->Write(offset, data, fua);
}

absl::Status FaultBackend::Flush() {
  if (absl::Status st = Check(Op::kFlush); !st.ok()) return st;
  return inner_->Flush();
}

absl::Status FaultBackend::Trim(uint64_t offset, uint64_t length, bool fua) {
  if (absl::Status st = Check(Op::kTrim); !st.ok()) return st;
  return inner_->Trim(offset, length, fua);
}

absl::Status FaultBackend::Zero(uint64_t offset, uint64_t length,
                                ZeroOptions options) {
  if (absl::Status st = Check(Op::kZero); !st.ok()) return st;
  return inner_->Zero(offset, length, options);
}

absl::Status FaultBackend::Cache(uint64_t offset, uint64_t length) {
  if (absl::Status st = Check(Op::kCache); !st.ok()) return st;
  return inner_->Cache(offset, length);
}

absl::Status FaultBackend::Extents(uint64_t offset, uint64_t length,
                                   absl::FunctionRef<bool(Extent)> visit) {
  if (absl::Status st = Check(Op::kExtents); !st.ok()) return st;
  return inner_->Extents(offset, length, visit);
}

absl::Status FaultBackend::ReadExtents(uint64_t offset, uint64_t length,
                                       absl::FunctionRef<bool(Extent)> visit) {
  if (absl::Status st = Check(Op::kExtents); !st.ok()) return st;
  return inner_->ReadExtents(offset, length, visit);
}

}  // namespace nbdmgr
