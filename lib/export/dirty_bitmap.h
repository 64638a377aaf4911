#ifndef NBDMGR_LIB_EXPORT_DIRTY_BITMAP_H_
#define NBDMGR_LIB_EXPORT_DIRTY_BITMAP_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"

namespace nbdmgr {

// Which blocks of an export changed: one bit per `granularity` bytes,
// set by every write, trim and zero that touches the block. What an
// incremental backup reads (as the NBD meta context qemu:dirty-bitmap:NAME)
// to copy only what changed since the bitmap was created or cleared.
//
// Memory: size / granularity / 8 bytes, rounded up to 8: 2 MiB per TiB at
// 64 KiB, 128 KiB per TiB at 1 MiB.
//
// Thread-safe and lock-free: Mark() from any number of connections at once,
// concurrently with Extents(), dirty_bytes() and Clear(). A block already
// dirty costs a load, no write, so rewrites do not bounce cache lines
// between cores. A Mark() concurrent with Clear() may land on either side.
class DirtyBitmap {
 public:
  // The smallest and largest granularity (powers of two), as qemu allows.
  static constexpr uint64_t kMinGranularity = 512;
  static constexpr uint64_t kMaxGranularity = uint64_t{1} << 31;

  // InvalidArgument naming the value for a granularity that is not a
  // power of two within [kMinGranularity, kMaxGranularity].
  static absl::StatusOr<std::unique_ptr<DirtyBitmap>> Create(
      uint64_t size, uint64_t granularity);

  uint64_t size() const { return size_; }
  uint64_t granularity() const { return granularity_; }
  // What the bits take.
  size_t memory_bytes() const { return words_count_ * sizeof(uint64_t); }

  // Marks every block [offset, offset + length) touches (clipped to size;
  // length 0 marks nothing).
  void Mark(uint64_t offset, uint64_t length);
  // Marks nothing dirty.
  void Clear();
  // Bytes in dirty blocks (the last block counted up to size only).
  uint64_t dirty_bytes() const;

  // Calls visit(length, dirty) for consecutive runs covering [offset,
  // offset + length) clipped to size, in order, each run as long as
  // possible (neighbours of one kind merged); runs start and end on block
  // boundaries except at the range's ends. Stops when visit returns false.
  void Extents(
      uint64_t offset, uint64_t length,
      absl::FunctionRef<bool(uint64_t length, bool dirty)> visit) const;

  // The bits as bytes, to be stored: "NBDMGRBM", version 1, export size,
  // granularity, the 64-bit words (little-endian), a CRC-32C of all that.
  // A snapshot: marks made meanwhile may or may not be in it.
  std::string Serialize() const;
  // The bitmap Serialize() made. DataLoss for anything truncated, corrupt
  // or not a bitmap; FailedPrecondition if it was made for another export
  // size (the export was resized: its bits no longer line up).
  static absl::StatusOr<std::unique_ptr<DirtyBitmap>> Parse(
      std::string_view data, uint64_t size);

 private:
  DirtyBitmap(uint64_t size, uint64_t granularity);
  bool Test(uint64_t block) const;

  const uint64_t size_;
  const uint64_t granularity_;
  const int shift_;  // log2(granularity_)
  const uint64_t blocks_;
  const size_t words_count_;
  std::unique_ptr<std::atomic<uint64_t>[]> words_;
  std::atomic<uint64_t> dirty_blocks_{0};
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_EXPORT_DIRTY_BITMAP_H_
