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
//   (temporary file, fsync, rename, fsync of the directory);
// - `exports.log`: the changes since that snapshot, one checksummed record
//   per change, written into a preallocated file, so recording a change is
//   one block write and one flush, with no new inode, rename or directory
//   update. When the log fills up, the set is compacted into a new snapshot
//   and the log starts over; a log whose generation differs from the
//   snapshot's was already compacted and is ignored.
// A change is durable when Put/Delete returns OK. A record cut short by a
// crash fails its checksum and ends the log: that change was never
// acknowledged. Not thread-safe: the caller serializes calls.
class StateStore {
 public:
  // Creates `dir` (mode 0700) if missing. The errno status if it cannot.
  static absl::StatusOr<std::unique_ptr<StateStore>> Open(std::string dir);
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  // The saved exports (snapshot plus log), in name order; none if nothing
  // was saved. DataLoss naming the file if the snapshot or the log cannot be
  // parsed or holds an invalid export; the files are left untouched.
  absl::StatusOr<std::vector<ExportConfig>> Load();
  // Durably records that `config` was created or updated / that the export
  // named `name` was deleted. On an error, the store rewrites the snapshot
  // without the change, so what is on disk matches what it reported.
  absl::Status Put(const ExportConfig& config);
  absl::Status Delete(const std::string& name);
  // Replaces the whole saved set (a new snapshot; the log starts over).
  absl::Status Save(const std::vector<ExportConfig>& exports);

  const std::string& path() const { return path_; }
  const std::string& log_path() const { return log_path_; }

  // Size of the log file, header included.
  static constexpr size_t kLogBytes = 1 << 20;

 private:
  using ExportMap = std::map<std::string, ExportConfig>;
  StateStore(std::string dir, std::string path, std::string log_path)
      : dir_(std::move(dir)),
        path_(std::move(path)),
        log_path_(std::move(log_path)) {}

  absl::StatusOr<ExportMap> LoadSnapshot();
  absl::Status ReplayLog(ExportMap& exports);
  // Records `change`; `mutate` applies it to the set (to exports_ once it
  // is durable, or to the copy a compaction writes).
  absl::Status Apply(const v1::StateChange& change,
                     absl::FunctionRef<void(ExportMap&)> mutate);
  // Writes `exports` as a new snapshot of the next generation, starts a
  // new, empty log for it, and makes `exports` the store's set. On an error
  // the set stays as it was.
  absl::Status Compact(ExportMap exports);
  void CloseLog();

  const std::string dir_;
  const std::string path_;
  const std::string log_path_;
  ExportMap exports_;        // what is on disk
  uint64_t generation_ = 0;  // of the snapshot on disk
  int log_fd_ = -1;          // -1: no log to append to; the next change
                             // compacts
  uint64_t log_end_ = 0;     // where the next record goes
};

// Writes `contents` to `path` atomically (same directory temporary file,
// fsync, rename, fsync directory).
absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& contents);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_STATE_STATE_STORE_H_
