#ifndef NBDMGR_LIB_STATE_QOS_GROUP_STORE_H_
#define NBDMGR_LIB_STATE_QOS_GROUP_STORE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/export/export_config.h"

namespace nbdmgr {

// The QoS groups created over the API, across restarts: one file,
// `<dir>/qos-groups.textproto` (v1.PersistedQosGroups in protobuf text
// format), replaced whole and atomically (WriteFileAtomically) at every
// change: groups are few and change rarely. Not thread-safe: the caller
// serializes calls.
class QosGroupStore {
 public:
  explicit QosGroupStore(const std::string& dir);

  // The saved groups, by name; none if nothing was saved. DataLoss naming
  // the file (which is left untouched) if it is not a regular file, is
  // larger than 1 MiB, does not parse, or holds an invalid or duplicate
  // group.
  absl::StatusOr<std::vector<QosGroupConfig>> Load() const;
  // Replaces the saved set.
  absl::Status Save(const std::vector<QosGroupConfig>& groups);

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_STATE_QOS_GROUP_STORE_H_
