#ifndef NBDMGR_LIB_STATE_STATE_STORE_H_
#define NBDMGR_LIB_STATE_STATE_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "lib/export/export_config.h"

namespace nbdmgr {

namespace v1 {
class StateChange;
}

// The persisted set of API-created exports, in `<dir>`:
// - `exports.textproto`: a snapshot, a nbdmgr.v1.PersistedState in protobuf
//   text format (a person can read it), always written atomically
//   (temporary file, fsync, rename, fsync of the directory). Enum values are
//   stored by name: new snapshots use the current names, and the names of
//   0.1.0 (deprecated aliases in export.proto) still load;
// - `exports.log`: the changes since that snapshot, one checksummed record
//   per change, written into a preallocated file, so recording a change is
//   one block write and one flush, with no new inode, rename or directory
//   update. When the log fills up, the set is compacted into a new snapshot
//   and the log starts over; a log of an older generation than the
//   snapshot's was already compacted and is ignored;
// - `lock`: held (flock) by the one store, in one nbdmgrd, that uses the
//   directory; it holds that process's pid.
//
// Durability contract of Put/Delete (and Save):
// - OK: the change is on disk (flushed) and a restart sees it.
// - An error: the change is not on disk and a restart does not see it; the
//   in-memory set is unchanged. A log record whose write or flush failed is
//   overwritten with zeroes in place (so it can never be replayed) and the
//   store then compacts, which retires that log. If the record can be
//   neither erased nor retired, the disk is in an unknown state (a restart
//   might still find that change): every later change is refused (gets the
//   compaction's error) until a compaction succeeds. The other case this
//   cannot cover: the filesystem fails to flush the directory after a new
//   snapshot replaced the old one; the error is returned, and the next
//   change rewrites the snapshot from the in-memory set.
// Not thread-safe: the caller serializes calls.
class StateStore {
 public:
  // Opens the state directory `dir`, creating it with mode 0700 (missing
  // parents 0755, both less the umask) if it does not exist. An existing
  // directory, or a symlink to one, is used as it is: its mode and owner
  // are never changed. FailedPrecondition naming `dir` and the fix if it is
  // not a directory, is group- or world-writable, is not owned by the
  // effective uid, or is in use by another store (another nbdmgrd: "state
  // directory DIR is in use by another nbdmgrd (pid N)"); InvalidArgument
  // for an empty path; the errno status if it cannot be created or opened. The
  // store holds `<dir>/lock` until it is destroyed.
  static absl::StatusOr<std::unique_ptr<StateStore>> Open(std::string dir);
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  // The saved exports (snapshot plus log), in name order; none if nothing
  // was saved. DataLoss naming the file if: the snapshot exists but is not
  // a regular file (a directory, FIFO, symlink...), is empty, does not parse
  // or holds an invalid export; the log is not a regular file, has a bad
  // header or size, or has a corrupt record anywhere but at its end (the
  // message gives the record's byte offset); the snapshot is missing while
  // a log exists, or is of an older generation than the log. A record at
  // the end of the log, cut short by a crash (only zeroes follow it), was
  // never acknowledged: it is dropped with a warning. On an error the files
  // are left untouched, and Put/Delete/Save return FailedPrecondition until
  // a Load succeeds, so a store that could not read its files never
  // overwrites them.
  absl::StatusOr<std::vector<ExportConfig>> Load();
  // Durably records that `config` was created or updated / that the export
  // named `name` was deleted; see the durability contract above.
  // FailedPrecondition if Load has not succeeded.
  absl::Status Put(const ExportConfig& config);
  absl::Status Delete(const std::string& name);
  // Replaces the whole saved set (a new snapshot; the log starts over).
  // OK: the new set is durable. An error: the previous set stays on disk,
  // except for the unflushed-directory case of the contract above.
  // FailedPrecondition if Load has not succeeded.
  absl::Status Save(const std::vector<ExportConfig>& exports);

  const std::string& path() const { return path_; }
  const std::string& log_path() const { return log_path_; }

  // Size of the log file, header included.
  static constexpr size_t kLogBytes = 1 << 20;
  // Largest record payload written to the log; a bigger change goes into a
  // new snapshot instead, and a record claiming more is corrupt.
  static constexpr size_t kMaxRecordBytes = 64 << 10;

 private:
  using ExportMap = std::map<std::string, ExportConfig>;
  StateStore(std::string dir, int dir_fd, int lock_fd);

  absl::StatusOr<ExportMap> LoadSnapshot();
  absl::Status ReplayLog(ExportMap& exports);
  // Records `change`; `mutate` applies it to the set (to exports_ once it
  // is durable, or to the copy a compaction writes).
  absl::Status Apply(const v1::StateChange& change,
                     absl::FunctionRef<void(ExportMap&)> mutate);
  // Writes `exports` as a new snapshot of the next generation and makes it
  // the store's set, then starts a new, empty log for it. OK once the
  // snapshot is durable, even if the new log could not be written (the
  // next change compacts again). On an error the set stays as it was and
  // the previous snapshot and log are still in place and valid.
  absl::Status Compact(ExportMap exports);
  void CloseLog();

  const std::string dir_;
  const std::string path_;
  const std::string log_path_;
  const int dir_fd_;     // the state directory, for the *at() calls
  const int lock_fd_;    // flock'ed for the store's lifetime
  bool loaded_ = false;  // Load succeeded: the set matches the disk
  bool snapshot_exists_ = false;
  bool must_compact_ = false;   // a failed record could not be erased
  ExportMap exports_;           // what is on disk
  uint64_t generation_ = 0;     // of the snapshot on disk
  int log_fd_ = -1;             // -1: no log to append to; the next change
                                // compacts
  uint64_t log_end_ = 0;        // where the next record goes
  uint64_t log_dirty_end_ = 0;  // end of a torn record dropped at load,
                                // zeroed by the next append
};

// Writes `contents` to `path` atomically: a temporary `<path>.tmp` (a stale
// one is removed first; it is created exclusively and never through a
// symlink), fsync, rename, fsync of the directory. The errno status of the
// step that failed; the temporary file does not survive an error.
absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& contents);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_STATE_STATE_STORE_H_
