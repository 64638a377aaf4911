#ifndef NBDMGR_LIB_EXPORT_BITMAP_SET_H_
#define NBDMGR_LIB_EXPORT_BITMAP_SET_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "lib/export/dirty_bitmap.h"
#include "lib/util/mutex.h"

namespace nbdmgr {

// What the API reports of one bitmap.
struct BitmapInfo {
  std::string name;
  uint64_t granularity = 0;
  // Recording writes; false once a checkpoint froze it.
  bool active = true;
  // False after a crash (or a restart that could not keep it): its bits
  // may miss writes, so it is not offered to clients, and a backup tool
  // must copy everything. ClearBitmap makes it consistent again.
  bool consistent = true;
  std::string inconsistent_reason;
  uint64_t dirty_bytes = 0;
  uint64_t memory_bytes = 0;
};

// A bitmap as persisted or restored: its settings and, if consistent, bits.
struct BitmapRecord {
  std::string name;
  bool active = true;
  bool consistent = true;
  std::string inconsistent_reason;
  std::shared_ptr<DirtyBitmap> bits;  // null only in an inconsistent record
  uint64_t granularity = 0;
};

// The named dirty bitmaps of one export (qemu:dirty-bitmap:NAME).
//
// Every write, trim and zero is marked (Mark) in every active bitmap after
// the backend call returns, whatever it returned (a failed write may have
// changed some blocks). Checkpoint freezes one bitmap and starts another in
// one step: a write marked before it is in the frozen one, a write marked
// after it in the new one, none in neither. Writes are marked before their
// reply is sent, so a write acknowledged before the checkpoint is in the
// frozen bitmap; one still in flight is in the new one (its data may land
// after a backup read the block).
//
// Cost: with no active bitmap Mark is one atomic load; with some, a shared
// lock and one bit test per block (a set per block first dirtied).
// Thread-safe.
class BitmapSet {
 public:
  static constexpr uint64_t kDefaultGranularity = 64 * 1024;
  // Per export; each bitmap's bits are held to kMaxBitmapBytes.
  static constexpr size_t kMaxBitmaps = 32;
  static constexpr size_t kMaxBitmapBytes = size_t{256} << 20;

  explicit BitmapSet(uint64_t export_size) : size_(export_size) {}

  // Letters, digits and . _ : - (a letter or digit first), at most 128
  // characters; InvalidArgument naming the name otherwise.
  static absl::Status ValidateName(std::string_view name);

  // Changes take `persist`, called (if set) with the bitmaps as they will
  // be, after the change was checked and before it is applied: its error
  // is returned and nothing changes. Changes are serialized.
  using Persist =
      std::function<absl::Status(const std::vector<BitmapRecord>& records)>;

  // A new active bitmap, all clean. InvalidArgument (name, granularity 0
  // means kDefaultGranularity, a granularity whose bits would exceed
  // kMaxBitmapBytes), AlreadyExists, ResourceExhausted (kMaxBitmaps).
  absl::StatusOr<BitmapInfo> Add(const std::string& name, uint64_t granularity,
                                 const Persist& persist = {});
  // NotFound. Clients that selected it keep reading its last state.
  absl::Status Remove(const std::string& name, const Persist& persist = {});
  // All clean, consistent and active: it records from now on (a frozen one
  // too). NotFound.
  absl::StatusOr<BitmapInfo> Clear(const std::string& name,
                                   const Persist& persist = {});
  // Freezes active bitmap `frozen` and starts active bitmap `started`
  // (granularity 0: `frozen`'s). NotFound, FailedPrecondition (`frozen` is
  // frozen already), and Add's errors for `started`; on an error nothing
  // changed. An inconsistent bitmap may be frozen (it stays inconsistent:
  // the tool copies everything once more, then uses `started`).
  absl::StatusOr<std::pair<BitmapInfo, BitmapInfo>> Checkpoint(
      const std::string& frozen, const std::string& started,
      uint64_t granularity, const Persist& persist = {});

  // Whether it has bitmap `name` at all (consistent or not).
  bool Has(const std::string& name) const;
  // The bits of consistent bitmap `name`, for a client's BLOCK_STATUS;
  // null if there is none or it is inconsistent.
  std::shared_ptr<const DirtyBitmap> Find(const std::string& name) const;
  // Names of the bitmaps Find() returns, sorted.
  std::vector<std::string> ConsistentNames() const;
  // Sorted by name. NotFound for one that does not exist.
  std::vector<BitmapInfo> List() const;
  absl::StatusOr<BitmapInfo> Get(const std::string& name) const;

  // Marks [offset, offset + length) in every active bitmap.
  void Mark(uint64_t offset, uint64_t length) {
    if (active_count_.load(std::memory_order_acquire) == 0) return;
    MarkSlow(offset, length);
  }

  // Every bitmap, for the bitmap store (bits shared, not copied).
  std::vector<BitmapRecord> Records() const;
  // Replaces the set with `records` (at start, before any client): what a
  // restart found. Records whose bits do not match the export's size are
  // taken as inconsistent; records with a name or granularity no longer
  // allowed are dropped.
  void Restore(std::vector<BitmapRecord> records);

 private:
  struct Entry {
    std::shared_ptr<DirtyBitmap> bits;
    uint64_t granularity = 0;
    bool active = true;
    bool consistent = true;
    std::string reason;
  };
  using Map = std::map<std::string, Entry>;
  Map Copy() const;
  static std::vector<BitmapRecord> RecordsOf(const Map& m);
  // Persists `next`, then makes it the set (running `under_lock` with
  // marking held off).
  absl::Status Apply(Map next, const Persist& persist,
                     const std::function<void()>& under_lock = {});
  static absl::Status Room(const Map& m);
  static absl::StatusOr<Map::iterator> Existing(Map& m,
                                                const std::string& name);
  void MarkSlow(uint64_t offset, uint64_t length);
  static BitmapInfo Describe(const std::string& name, const Entry& e);
  absl::StatusOr<std::shared_ptr<DirtyBitmap>> NewBits(
      uint64_t granularity) const;
  // Rebuilds active_ from bitmaps_.
  void Reindex() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint64_t size_;
  mutable SharedMutex mu_;
  std::map<std::string, Entry> bitmaps_ ABSL_GUARDED_BY(mu_);
  // The active bitmaps' bits (owned by bitmaps_), what Mark walks.
  std::vector<DirtyBitmap*> active_ ABSL_GUARDED_BY(mu_);
  std::atomic<size_t> active_count_{0};
  Mutex change_mu_;  // one change at a time (check, persist, apply)
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_EXPORT_BITMAP_SET_H_
