#ifndef NBDMGR_LIB_BACKEND_BACKEND_H_
#define NBDMGR_LIB_BACKEND_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"

namespace nbdmgr {

// What a backend can do; the NBD layer advertises flags from this.
struct BackendCaps {
  bool can_trim = false;        // Trim() does something useful
  bool can_zero = true;         // Zero() is supported (always emulatable)
  bool can_fast_zero = false;   // Zero(fast=true) may succeed
  bool can_flush = true;        // Flush() and fua are meaningful
  bool can_multi_conn = false;  // flush on one connection covers all
  bool can_extents = false;     // Extents() reports real holes
  bool can_cache = false;       // NBD_CMD_CACHE is advertised: Cache()
                                // prefetches, or is a no-op where there is
                                // nothing slower to prefetch from
  bool blocking = false;        // calls may block on I/O: run off the
                                // network threads
  bool async = false;  // ReadAsync, WriteAsync and FlushAsync start the
                       // call without blocking (then run on the io thread)
  bool async_needs_ring = false;  // ... given the io thread's IoRing
  // ReadAsync starts a read without blocking even though the other calls
  // block (they run on the pool; reads need a ring as async_needs_ring
  // says).
  bool async_read = false;
  bool zero_copy_read = false;  // ReadPinned() lends stored bytes
  // READs shorter than this are sent as data without asking Extents() for
  // holes (where asking costs system calls, a small hole is cheaper sent).
  uint64_t sparse_read_min = 0;
  // What one pin keeps allocated: whole units of this many bytes (a
  // memory-export page), however few of them a READ asked for.
  uint64_t pin_unit = 1;
};

// Keeps bytes lent by Backend::ReadPinned allocated until Release(), which
// the borrower calls exactly once, from any thread, once it no longer reads
// them (after they were written to the socket). Releasing never needs the
// backend: a pin may outlive it.
class Pin {
 public:
  virtual void Release() = 0;

 protected:
  ~Pin() = default;
};

// 64 KiB of zeroes that live forever: what holes are lent as.
inline std::span<const uint8_t> ZeroBytes() {
  static const uint8_t zeros[64 * 1024] = {};
  return std::span<const uint8_t>(zeros, sizeof(zeros));
}

class IoRing;  // lib/backend/io_ring.h: the io thread's io_uring

// The completion of one asynchronous backend call (ReadAsync, WriteAsync,
// FlushAsync). The backend calls Complete() exactly once, on any thread,
// possibly before the call that started it returns; after that it touches
// neither this object nor the call's buffers. Until then the backend may
// keep the call's own state in scratch(): room for a trivially destructible
// object of kScratchSize bytes (a ring operation, a librbd completion).
class IoCompletion {
 public:
  static constexpr size_t kScratchSize = 96;
  virtual void Complete(absl::Status status) = 0;
  void* scratch() { return scratch_; }

 protected:
  ~IoCompletion() = default;

 private:
  alignas(std::max_align_t) unsigned char scratch_[kScratchSize];
};

// Extent flags. They are the bits of NBD's base:allocation context
// (NBD_STATE_HOLE, NBD_STATE_ZERO), which lib/nbd checks at compile time,
// so extents go on the wire unchanged.
inline constexpr uint32_t kExtentHole = 1 << 0;  // not allocated
inline constexpr uint32_t kExtentZero = 1 << 1;  // reads as zeroes

// One extent of an export: `length` bytes with `flags` (kExtentHole |
// kExtentZero, or 0 for allocated data).
struct Extent {
  uint64_t length = 0;
  uint32_t flags = 0;
};

struct ZeroOptions {
  bool may_trim = true;  // false for NBD_CMD_FLAG_NO_HOLE
  bool fast = false;     // NBD_CMD_FLAG_FAST_ZERO: fail Unimplemented unless
                         // faster than writing zeroes
  bool fua = false;
};

// The storage behind an export. Callers (the NBD layer) have already checked
// every offset and length against size(): [offset, offset+length) is inside
// the device and length > 0. Implementations are thread-safe: several
// connections call them concurrently. Errors are absl::Status values whose
// code maps to an NBD error (ResourceExhausted -> ENOSPC, PermissionDenied ->
// EPERM, InvalidArgument and OutOfRange -> EINVAL, Unimplemented -> ENOTSUP,
// Unavailable -> ESHUTDOWN, else EIO; lib/nbd/errors.h).
class Backend {
 public:
  virtual ~Backend() = default;

  virtual uint64_t size() const = 0;
  virtual BackendCaps caps() const = 0;

  // Fills `buf` with the bytes at `offset`; holes read as zeroes.
  virtual absl::Status Read(uint64_t offset, std::span<uint8_t> buf) = 0;
  // Zero-copy read, for backends with caps().zero_copy_read: calls `piece`
  // with views of the stored bytes that cover [offset, offset+length) in
  // order, each with the pin that keeps it allocated (null: never freed,
  // e.g. ZeroBytes()). The caller releases every pin it was given. A trim or
  // zero never frees pinned bytes, but a write that overlaps the range may
  // show through while they are borrowed: NBD leaves overlapping requests in
  // flight unordered. Unimplemented by default.
  virtual absl::Status ReadPinned(
      uint64_t offset, uint64_t length,
      absl::FunctionRef<void(std::span<const uint8_t>, Pin*)> piece) {
    (void)offset;
    (void)length;
    (void)piece;
    return absl::UnimplementedError("zero-copy reads not supported");
  }
  // Stores `data` at `offset`; with `fua`, durable before returning.
  virtual absl::Status Write(uint64_t offset, std::span<const uint8_t> data,
                             bool fua) = 0;
  // Makes every completed write durable.
  virtual absl::Status Flush() = 0;
  // Read, Write and Flush as asynchronous calls, for backends with
  // caps().async, finished by `done`. Called on an io thread; `ring` is
  // that thread's io_uring (never null for caps().async_needs_ring, else
  // possibly null). The defaults run the synchronous call and complete at
  // once.
  virtual void ReadAsync(uint64_t offset, std::span<uint8_t> buf, IoRing* ring,
                         IoCompletion& done) {
    (void)ring;
    done.Complete(Read(offset, buf));
  }
  virtual void WriteAsync(uint64_t offset, std::span<const uint8_t> data,
                          bool fua, IoRing* ring, IoCompletion& done) {
    (void)ring;
    done.Complete(Write(offset, data, fua));
  }
  virtual void FlushAsync(IoRing* ring, IoCompletion& done) {
    (void)ring;
    done.Complete(Flush());
  }
  // Discards the range if it can (a hint; contents afterwards are unspecified
  // by NBD, but our backends read trimmed ranges as zeroes).
  virtual absl::Status Trim(uint64_t offset, uint64_t length, bool fua) = 0;
  // Makes the range read as zeroes.
  virtual absl::Status Zero(uint64_t offset, uint64_t length,
                            ZeroOptions options) = 0;
  // What identifies the stored data across restarts of the daemon, so a
  // dirty bitmap saved at a clean stop is trusted at the next start only
  // if nothing else changed the data meanwhile. nullopt (the default): the
  // data does not outlive the daemon (memory, null) or others may write it
  // while the daemon is stopped (rbd); such bitmaps come back inconsistent.
  // Call after the last write and flush.
  virtual std::optional<std::string> DurableIdentity() const {
    return std::nullopt;
  }
  // NBD_CMD_CACHE: a hint that [offset, offset+length) will be read soon.
  // Starts bringing it into faster storage (the page cache) and may return
  // before it is there; a no-op where there is nothing to prefetch. An
  // error changes nothing about later reads and writes of the range. The
  // default does nothing.
  virtual absl::Status Cache(uint64_t offset, uint64_t length) {
    (void)offset;
    (void)length;
    return absl::OkStatus();
  }
  // Calls `visit` with consecutive extents covering [offset, offset+length),
  // in order, stopping early when `visit` returns false. kExtentZero only
  // where the backend knows the bytes read as zeroes (never for data that
  // may not be zero, whatever is in flight), kExtentHole only where nothing
  // is allocated. The default reports one allocated extent.
  virtual absl::Status Extents(uint64_t offset, uint64_t length,
                               absl::FunctionRef<bool(Extent)> visit) {
    (void)offset;
    visit(Extent{length, 0});
    return absl::OkStatus();
  }
  // Extents() for planning a READ (which ranges to send as holes): only
  // kExtentZero is meaningful; kExtentHole may also be set on allocated
  // zeroes where telling them apart costs more than a READ saves. The
  // default is Extents().
  virtual absl::Status ReadExtents(uint64_t offset, uint64_t length,
                                   absl::FunctionRef<bool(Extent)> visit) {
    return Extents(offset, length, visit);
  }
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BACKEND_BACKEND_H_
