#ifndef NBDMGR_LIB_BACKEND_MEMORY_BACKEND_H_
#define NBDMGR_LIB_BACKEND_MEMORY_BACKEND_H_

#include <array>
#include <atomic>
#include <memory>
#include <shared_mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/backend/backend.h"

namespace nbdmgr {

// A sparse RAM disk. Memory is allocated in 64 KiB pages on first write;
// TRIM and WRITE_ZEROES (unless NO_HOLE) free the whole pages they cover
// and zero the part of a page they cover in part, so block status reports
// exactly which pages are allocated. WRITE_ZEROES with NO_HOLE keeps its
// pages allocated and marks the ones it zeroes whole (or allocates) as
// known zero until the next write touching them: block status reports
// those as zero, allocated. CACHE is answered at once (RAM is as fast as
// it gets). Thread-safe. Data is lost when the backend is destroyed.
class MemoryBackend final : public Backend {
 public:
  static constexpr uint64_t kPageSize = 64 * 1024;
  static constexpr uint64_t kMaxSize = uint64_t{64} << 40;  // 64 TiB

  // InvalidArgument if size is 0 or above kMaxSize.
  static absl::StatusOr<std::unique_ptr<MemoryBackend>> Create(uint64_t size);
  ~MemoryBackend() override;

  uint64_t size() const override { return size_; }
  BackendCaps caps() const override;
  absl::Status Read(uint64_t offset, std::span<uint8_t> buf) override;
  // Lends the pages themselves (one pin per page piece; holes are lent as
  // ZeroBytes()). A trimmed page lives on until its last pin is released.
  absl::Status ReadPinned(
      uint64_t offset, uint64_t length,
      absl::FunctionRef<void(std::span<const uint8_t>, Pin*)> piece) override;
  absl::Status Write(uint64_t offset, std::span<const uint8_t> data,
                     bool fua) override;
  absl::Status Flush() override { return absl::OkStatus(); }
  absl::Status Trim(uint64_t offset, uint64_t length, bool fua) override;
  absl::Status Zero(uint64_t offset, uint64_t length,
                    ZeroOptions options) override;
  // Unallocated pages are holes that read as zeroes; allocated pages known
  // to be zero (see above) are zero; the rest is data.
  absl::Status Extents(uint64_t offset, uint64_t length,
                       absl::FunctionRef<bool(Extent)> visit) override;

  // Bytes of page memory currently allocated.
  uint64_t allocated_bytes() const {
    return allocated_.load(std::memory_order_relaxed);
  }

 private:
  static constexpr uint64_t kPagesPerTable = 4096;  // 256 MiB per table
  // Writes of at least this much of a page bypass the cache (StreamCopy):
  // bulk data, unlikely to be read back while still cached.
  static constexpr size_t kStreamCopyBytes = 32 * 1024;
  // One page of data, reference counted: its slot holds one reference and
  // every zero-copy reader one more; the last Release() frees it.
  struct Page final : Pin {
    std::atomic<uint32_t> refs{1};
    alignas(16) uint8_t data[kPageSize];  // calloc's alignment
    // A zero-filled page with one reference; nullptr when out of memory.
    static Page* Allocate();
    void Release() override;
  };
  struct Table {
    std::array<std::atomic<Page*>, kPagesPerTable> pages{};
    // Per page: its allocated page holds only zeroes, as a NO_HOLE
    // WRITE_ZEROES left it. Set and cleared under the page's stripe lock
    // held exclusively (writers clear it before changing a byte); read
    // without it (Extents), so a reader racing a write may see either.
    // Meaningless while the page is not allocated.
    std::array<std::atomic<bool>, kPagesPerTable> known_zero{};
  };

  explicit MemoryBackend(uint64_t size);

  // The page's slot, creating its table when `create`; nullptr if the table
  // does not exist and !create.
  std::atomic<Page*>* Slot(uint64_t page, bool create);
  // The page's known-zero flag; its table must exist (Slot() returned
  // non-null).
  std::atomic<bool>& KnownZero(uint64_t page) {
    return tables_[page / kPagesPerTable]
        .load(std::memory_order_acquire)
        ->known_zero[page % kPagesPerTable];
  }
  // Returns the page, allocating a zeroed one if absent. Caller holds the
  // page's stripe lock.
  Page* GetOrAllocate(std::atomic<Page*>& slot);
  // Calls fn(page, offset_in_page, n, done) for each page-sized piece of
  // [offset, offset+length), in order; stops at the first non-OK status.
  template <typename Fn>
  static absl::Status ForEachPiece(uint64_t offset, uint64_t length, Fn fn);
  // Frees the pages [offset, offset+length) covers whole and zeroes the
  // parts of pages it covers in part (TRIM, WRITE_ZEROES without NO_HOLE).
  void FreeRange(uint64_t offset, uint64_t length);
  std::shared_mutex& StripeOf(uint64_t page) {
    return stripes_[page % stripes_.size()];
  }

  const uint64_t size_;
  std::vector<std::atomic<Table*>> tables_;
  // Readers (and pinners) take a page's stripe shared; writers and freeing
  // take it exclusive, so no page is freed while someone copies from or pins
  // it, a copying reader never sees half of a concurrent write to its page,
  // and there is no data race between two writers.
  std::array<std::shared_mutex, 512> stripes_;
  std::atomic<uint64_t> allocated_{0};
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BACKEND_MEMORY_BACKEND_H_
