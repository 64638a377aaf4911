#include "lib/state/state_store.h"

#include <fcntl.h>
#include <google/protobuf/text_format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "lib/control/proto_convert.h"
#include "lib/util/errors.h"
#include "nbdmgr/v1/state.pb.h"

namespace nbdmgr {
namespace {

constexpr char kLogMagic[8] = {'N', 'B', 'D', 'M', 'L', 'O', 'G', '1'};
constexpr size_t kLogHeaderBytes = 16;    // magic, generation
constexpr size_t kRecordHeaderBytes = 8;  // payload length, CRC-32C

uint32_t Crc32c(const std::string& data) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82f63b78 ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xffffffff;
  for (unsigned char b : data) c = table[(c ^ b) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffff;
}

void PutLe(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i)
    out.push_back(static_cast<char>(v >> (8 * i)));
}

uint64_t GetLe(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) {
    v |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  }
  return v;
}

absl::Status PwriteAll(int fd, const std::string& data, uint64_t offset,
                       const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done,
                         static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("write ", path));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// The config of a persisted export; an error names the export when it can.
absl::StatusOr<ExportConfig> ConfigFromPersisted(const v1::Export& p) {
  absl::StatusOr<std::string> id = ExportIdFromName(p.name());
  if (!id.ok()) return id.status();
  absl::StatusOr<ExportConfig> c = ExportConfigFromProto(p, *id);
  if (!c.ok()) {
    return absl::Status(
        c.status().code(),
        absl::StrCat("export \"", *id, "\": ", c.status().message()));
  }
  return c;
}

}  // namespace

absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& contents) {
  std::string tmp = absl::StrCat(path, ".tmp");
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("create ", tmp));
  if (absl::Status st = PwriteAll(fd, contents, 0, tmp); !st.ok()) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return st;
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
  std::filesystem::path d(dir);
  std::string path = (d / "exports.textproto").string();
  std::string log_path = (d / "exports.log").string();
  return std::unique_ptr<StateStore>(
      new StateStore(std::move(dir), std::move(path), std::move(log_path)));
}

StateStore::~StateStore() { CloseLog(); }

void StateStore::CloseLog() {
  if (log_fd_ >= 0) ::close(log_fd_);
  log_fd_ = -1;
  log_end_ = 0;
}

absl::StatusOr<StateStore::ExportMap> StateStore::LoadSnapshot() {
  ExportMap out;
  generation_ = 0;
  std::ifstream in(path_);
  if (!in) {
    if (errno == ENOENT) return out;
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
  for (const v1::Export& p : state.exports()) {
    absl::StatusOr<ExportConfig> c = ConfigFromPersisted(p);
    if (!c.ok()) {
      return absl::DataLossError(
          absl::StrCat(path_, ": ", c.status().message()));
    }
    out[c->name] = std::move(*c);
  }
  generation_ = state.log_generation();
  return out;
}

absl::Status StateStore::ReplayLog(ExportMap& exports) {
  int fd = ::open(log_path_.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::OkStatus();  // the next change compacts
    return ErrnoStatus(errno, absl::StrCat("open ", log_path_));
  }
  std::string log(kLogBytes, '\0');
  ssize_t n = ::pread(fd, log.data(), log.size(), 0);
  if (n < 0) {
    absl::Status st = ErrnoStatus(errno, absl::StrCat("read ", log_path_));
    ::close(fd);
    return st;
  }
  log.resize(static_cast<size_t>(n));
  if (log.size() < kLogHeaderBytes ||
      log.compare(0, sizeof(kLogMagic), kLogMagic, sizeof(kLogMagic)) != 0) {
    ::close(fd);
    return absl::DataLossError(absl::StrCat(
        log_path_,
        ": not a valid state log (fix or move it; it was left untouched)"));
  }
  if (GetLe(log.data() + 8, 8) != generation_) {
    ::close(fd);  // compacted into the snapshot already
    return absl::OkStatus();
  }
  uint64_t pos = kLogHeaderBytes;
  while (pos + kRecordHeaderBytes <= log.size()) {
    uint64_t len = GetLe(log.data() + pos, 4);
    uint32_t crc = static_cast<uint32_t>(GetLe(log.data() + pos + 4, 4));
    if (len == 0 || pos + kRecordHeaderBytes + len > log.size()) break;
    std::string payload = log.substr(pos + kRecordHeaderBytes, len);
    if (Crc32c(payload) != crc) break;  // cut short by a crash: never acked
    v1::StateChange change;
    if (!change.ParseFromString(payload)) break;
    absl::Status bad;
    if (change.has_put()) {
      absl::StatusOr<ExportConfig> c = ConfigFromPersisted(change.put());
      if (c.ok()) {
        exports[c->name] = std::move(*c);
      } else {
        bad = c.status();
      }
    } else {
      absl::StatusOr<std::string> id = ExportIdFromName(change.delete_name());
      if (id.ok()) {
        exports.erase(*id);
      } else {
        bad = id.status();
      }
    }
    if (!bad.ok()) {
      ::close(fd);
      return absl::DataLossError(absl::StrCat(log_path_, ": record at byte ",
                                              pos, ": ", bad.message()));
    }
    pos += kRecordHeaderBytes + len;
  }
  log_fd_ = fd;
  log_end_ = pos;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ExportConfig>> StateStore::Load() {
  CloseLog();
  absl::StatusOr<ExportMap> exports = LoadSnapshot();
  if (!exports.ok()) return exports.status();
  if (absl::Status st = ReplayLog(*exports); !st.ok()) {
    CloseLog();
    return st;
  }
  exports_ = *exports;
  std::vector<ExportConfig> out;
  for (auto& [name, c] : *exports) out.push_back(std::move(c));
  return out;
}

absl::Status StateStore::Put(const ExportConfig& config) {
  v1::StateChange change;
  *change.mutable_put() = ExportConfigToProto(config);
  return Apply(change, [&](ExportMap& m) { m[config.name] = config; });
}

absl::Status StateStore::Delete(const std::string& name) {
  v1::StateChange change;
  change.set_delete_name(ExportResourceName(name));
  return Apply(change, [&](ExportMap& m) { m.erase(name); });
}

absl::Status StateStore::Save(const std::vector<ExportConfig>& exports) {
  ExportMap next;
  for (const ExportConfig& c : exports) next[c.name] = c;
  return Compact(std::move(next));
}

absl::Status StateStore::Apply(const v1::StateChange& change,
                               absl::FunctionRef<void(ExportMap&)> mutate) {
  std::string payload = change.SerializeAsString();
  if (log_fd_ < 0 ||
      log_end_ + kRecordHeaderBytes + payload.size() > kLogBytes) {
    // No log to append to, or it is full: a new snapshot takes the change.
    ExportMap next = exports_;
    mutate(next);
    return Compact(std::move(next));
  }
  std::string record;
  PutLe(record, payload.size(), 4);
  PutLe(record, Crc32c(payload), 4);
  record += payload;
  absl::Status st = PwriteAll(log_fd_, record, log_end_, log_path_);
  if (st.ok() && ::fdatasync(log_fd_) != 0) {
    st = ErrnoStatus(errno, absl::StrCat("fdatasync ", log_path_));
  }
  if (st.ok()) {
    log_end_ += record.size();
    mutate(exports_);
    return st;
  }
  // The record may or may not be on disk: a snapshot without it makes the
  // disk match exports_ again (and retires this log). If that fails too,
  // the log stays closed and the next change tries again.
  (void)Compact(exports_);
  return st;
}

absl::Status StateStore::Compact(ExportMap exports) {
  CloseLog();
  const uint64_t generation = generation_ + 1;
  v1::PersistedState state;
  for (const auto& [name, c] : exports) {
    *state.add_exports() = ExportConfigToProto(c);
  }
  state.set_log_generation(generation);
  std::string text;
  google::protobuf::TextFormat::PrintToString(state, &text);
  absl::Status st = WriteFileAtomically(
      path_,
      absl::StrCat(
          "# nbdmgrd exports created over the API (with exports.log, the "
          "changes since). Written by nbdmgrd.\n",
          text));
  if (!st.ok()) return st;
  generation_ = generation;
  // A fresh log: header, then zeroes written out (not just allocated), so
  // a record later overwrites blocks the file already has.
  std::string log(kLogBytes, '\0');
  std::memcpy(log.data(), kLogMagic, sizeof(kLogMagic));
  std::string gen;
  PutLe(gen, generation, 8);
  std::memcpy(log.data() + 8, gen.data(), 8);
  if (st = WriteFileAtomically(log_path_, log); !st.ok()) return st;
  int fd = ::open(log_path_.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", log_path_));
  log_fd_ = fd;
  log_end_ = kLogHeaderBytes;
  exports_ = std::move(exports);
  return absl::OkStatus();
}

}  // namespace nbdmgr
