#ifndef NBDMGR_LIB_STATE_BITMAP_STORE_H_
#define NBDMGR_LIB_STATE_BITMAP_STORE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/export/bitmap_set.h"

namespace nbdmgr {

// The dirty bitmaps of exports across restarts: one file per export,
// `<dir>/<export>.bitmaps`, always replaced atomically (WriteFileAtomically).
//
// A bitmap's bits are only trusted after a clean stop. While the daemon
// runs, the file holds the bitmaps' settings only, marked in use (the
// bits live in memory and change with every write); at a clean stop, after
// the export's last flush, SaveClean writes the bits with the backend's
// durable identity (file: device, inode, size, modification time). Load
// gives back the bits only if the file was saved clean and the identity
// still matches; anything else (a crash or SIGKILL while in use, a file
// changed or replaced while the daemon was stopped, a backend without an
// identity: memory, null, rbd) comes back inconsistent, with the reason.
// The caller then saves the loaded set in use again before serving.
//
// Format (little-endian): "NBDMGRBS", u32 version 1, u32 flags (1: saved
// at a clean stop, 2: with an identity and bits), u32 length + identity, u32
// count, per bitmap: u32 length + name, u32 flags (1: active, 2: consistent, 4:
// bits follow), u64 granularity, u32 length + inconsistent reason, u64 length +
// DirtyBitmap::Serialize() bytes; then a CRC-32C of everything before it. Every
// length is bounded before it sizes anything. Not thread-safe: the caller
// serializes calls per export.
class BitmapStore {
 public:
  explicit BitmapStore(std::string dir) : dir_(std::move(dir)) {}

  // Settings of every bitmap, in use. No bitmaps: the file is removed.
  absl::Status SaveInUse(const std::string& export_name,
                         const std::vector<BitmapRecord>& records);
  // Settings and bits, clean, for `identity` (nullopt: as SaveInUse).
  absl::Status SaveClean(const std::string& export_name,
                         const std::vector<BitmapRecord>& records,
                         const std::optional<std::string>& identity);
  // The bitmaps saved for an export of `size` bytes whose backend now has
  // `identity`; none if nothing was saved. DataLoss naming the file if it
  // is corrupt, truncated, not a regular file, or larger than any bitmaps
  // of that export could be (checked before it is read);
  // FailedPrecondition for an unsafe directory (CheckDir).
  absl::StatusOr<std::vector<BitmapRecord>> Load(
      const std::string& export_name, uint64_t size,
      const std::optional<std::string>& identity) const;
  // Forgets an export's bitmaps (the export was removed, or a new one of
  // that name is created). OK if there were none.
  absl::Status Remove(const std::string& export_name);
  // Moves a file Load could not read aside to `<file>.corrupt` (kept for
  // the operator), so the export starts without bitmaps.
  absl::Status SetAside(const std::string& export_name);

  std::string PathOf(const std::string& export_name) const;

 private:
  // OK if the directory is missing or a real directory of ours that no one
  // else may write; FailedPrecondition otherwise (a symlink planted there).
  absl::Status CheckDir() const;
  absl::Status Write(const std::string& export_name,
                     const std::vector<BitmapRecord>& records,
                     const std::optional<std::string>& identity, bool clean);
  const std::string dir_;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_STATE_BITMAP_STORE_H_
