#include "lib/state/state_store.h"

#include <fcntl.h>
#include <google/protobuf/text_format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "lib/control/proto_convert.h"
#include "lib/util/errors.h"
#include "nbdmgr/v1/state.pb.h"

namespace nbdmgr {

absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& contents) {
  std::string tmp = absl::StrCat(path, ".tmp");
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("create ", tmp));
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status st = ErrnoStatus(errno, absl::StrCat("write ", tmp));
      ::close(fd);
      ::unlink(tmp.c_str());
      return st;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    absl::Status st = ErrnoStatus(errno, absl::StrCat("fsync ", tmp));
    ::close(fd);
    ::unlink(tmp.c_str());
    return st;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status st = ErrnoStatus(errno, absl::StrCat("rename to ", path));
    ::unlink(tmp.c_str());
    return st;
  }
  std::string dir = std::filesystem::path(path).parent_path().string();
  int dfd = ::open(dir.empty() ? "." : dir.c_str(),
                   O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<StateStore>> StateStore::Open(std::string dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::Status(
        absl::ErrnoToStatusCode(ec.value()),
        absl::StrCat("state directory ", dir, ": ", ec.message()));
  }
  ::chmod(dir.c_str(), 0700);
  std::string path =
      (std::filesystem::path(dir) / "exports.textproto").string();
  return std::unique_ptr<StateStore>(
      new StateStore(std::move(dir), std::move(path)));
}

absl::StatusOr<std::vector<ExportConfig>> StateStore::Load() const {
  std::ifstream in(path_);
  if (!in) {
    if (errno == ENOENT) return std::vector<ExportConfig>{};
    return ErrnoStatus(errno, absl::StrCat("read ", path_));
  }
  std::stringstream text;
  text << in.rdbuf();
  v1::PersistedState state;
  if (!google::protobuf::TextFormat::ParseFromString(text.str(), &state)) {
    return absl::DataLossError(absl::StrCat(
        path_,
        ": not a valid state file (fix or move it; it was left untouched)"));
  }
  std::vector<ExportConfig> out;
  for (const v1::Export& p : state.exports()) {
    absl::StatusOr<std::string> id = ExportIdFromName(p.name());
    if (!id.ok()) {
      return absl::DataLossError(
          absl::StrCat(path_, ": ", id.status().message()));
    }
    absl::StatusOr<ExportConfig> c = ExportConfigFromProto(p, *id);
    if (!c.ok()) {
      return absl::DataLossError(absl::StrCat(path_, ": export \"", *id,
                                              "\": ", c.status().message()));
    }
    out.push_back(std::move(*c));
  }
  return out;
}

absl::Status StateStore::Save(const std::vector<ExportConfig>& exports) {
  v1::PersistedState state;
  for (const ExportConfig& c : exports) {
    *state.add_exports() = ExportConfigToProto(c);
  }
  std::string text;
  google::protobuf::TextFormat::PrintToString(state, &text);
  return WriteFileAtomically(
      path_,
      absl::StrCat(
          "# nbdmgrd exports created over the API. Written by nbdmgrd.\n",
          text));
}

}  // namespace nbdmgr
