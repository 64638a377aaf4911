#include "lib/state/qos_group_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "lib/convert/proto_convert.h"
#include "lib/state/state_store.h"
#include "lib/util/errors.h"
#include "nbdmgr/v1/qos.pb.h"

namespace nbdmgr {
namespace {

constexpr off_t kMaxFileBytes = 1 << 20;
constexpr const char* kUntouched =
    " (left untouched: fix or remove it, then start nbdmgrd again)";

}  // namespace

QosGroupStore::QosGroupStore(const std::string& dir)
    : path_(absl::StrCat(dir, "/qos-groups.textproto")) {}

absl::StatusOr<std::vector<QosGroupConfig>> QosGroupStore::Load() const {
  std::vector<QosGroupConfig> out;
  const int fd =
      ::open(path_.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return out;
    return absl::DataLossError(
        absl::StrCat(path_, ": cannot be opened (",
                     ErrnoStatus(errno, "open").message(), ")", kUntouched));
  }
  std::string text;
  struct stat st;
  absl::Status status;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    status = absl::DataLossError(
        absl::StrCat(path_, ": not a regular file", kUntouched));
  } else if (st.st_size > kMaxFileBytes) {
    status = absl::DataLossError(absl::StrCat(
        path_, ": larger than ", kMaxFileBytes, " bytes", kUntouched));
  } else {
    text.resize(static_cast<size_t>(st.st_size));
    size_t done = 0;
    while (done < text.size()) {
      const ssize_t n = ::read(fd, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        status = ErrnoStatus(n < 0 ? errno : EIO, absl::StrCat("read ", path_));
        break;
      }
      done += static_cast<size_t>(n);
    }
  }
  ::close(fd);
  if (!status.ok()) return status;
  v1::PersistedQosGroups saved;
  if (!google::protobuf::TextFormat::ParseFromString(text, &saved)) {
    return absl::DataLossError(
        absl::StrCat(path_, ": not a valid QoS group file", kUntouched));
  }
  std::set<std::string> names;
  for (const v1::QosGroup& p : saved.qos_groups()) {
    absl::StatusOr<std::string> id = QosGroupIdFromName(p.name());
    absl::StatusOr<QosGroupConfig> g =
        id.ok() ? QosGroupConfigFromProto(p, *id)
                : absl::StatusOr<QosGroupConfig>(id.status());
    if (!g.ok()) {
      return absl::DataLossError(
          absl::StrCat(path_, ": ", g.status().message(), kUntouched));
    }
    if (!names.insert(g->name).second) {
      return absl::DataLossError(absl::StrCat(path_, ": QoS group \"", g->name,
                                              "\" appears twice", kUntouched));
    }
    out.push_back(std::move(*g));
  }
  return out;
}

absl::Status QosGroupStore::Save(const std::vector<QosGroupConfig>& groups) {
  v1::PersistedQosGroups saved;
  for (const QosGroupConfig& g : groups) {
    *saved.add_qos_groups() = QosGroupConfigToProto(g);
  }
  std::string text;
  google::protobuf::TextFormat::PrintToString(saved, &text);
  return WriteFileAtomically(path_, text);
}

}  // namespace nbdmgr
