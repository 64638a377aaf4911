#ifndef NBDMGR_LIB_STATE_STATE_STORE_H_
#define NBDMGR_LIB_STATE_STATE_STORE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/export/export_config.h"

namespace nbdmgr {

// The persisted set of API-created exports: `<dir>/exports.textproto`, a
// nbdmgr.v1.PersistedState in protobuf text format (a person can read it).
// Saves are atomic (temporary file, fsync, rename, fsync of the directory),
// so a crash leaves either the old or the new file. Not thread-safe: the
// caller serializes Save calls.
class StateStore {
 public:
  // Creates `dir` (mode 0700) if missing. The errno status if it cannot.
  static absl::StatusOr<std::unique_ptr<StateStore>> Open(std::string dir);

  // The saved exports; none if the file does not exist. DataLoss (naming
  // the file) if it cannot be parsed; the file is left untouched.
  absl::StatusOr<std::vector<ExportConfig>> Load() const;
  absl::Status Save(const std::vector<ExportConfig>& exports);

  const std::string& path() const { return path_; }

 private:
  StateStore(std::string dir, std::string path)
      : dir_(std::move(dir)), path_(std::move(path)) {}
  const std::string dir_;
  const std::string path_;
};

// Writes `contents` to `path` atomically (same directory temporary file,
// fsync, rename, fsync directory).
absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& contents);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_STATE_STATE_STORE_H_
