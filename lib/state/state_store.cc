#include "lib/state/state_store.h"

#include <fcntl.h>
#include <google/protobuf/text_format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/convert/proto_convert.h"
#include "lib/util/crc32c.h"
#include "lib/util/errors.h"
#include "lib/util/little_endian.h"
#include "lib/util/strings.h"
#include "nbdmgr/v1/state.pb.h"
#include "spdlog/spdlog.h"

namespace nbdmgr {
namespace {

constexpr char kSnapshotName[] = "exports.textproto";
constexpr char kLogName[] = "exports.log";
constexpr char kLockName[] = "lock";
constexpr char kLogMagic[8] = {'N', 'B', 'D', 'M', 'L', 'O', 'G', '1'};
constexpr size_t kLogHeaderBytes = 16;    // magic, generation
constexpr size_t kRecordHeaderBytes = 8;  // payload length, CRC-32C

// Ends every message about state files that stop the daemon.
constexpr char kUntouched[] =
    " (the state files were left untouched: fix or restore them, or move "
    "them away to start without the exports created over the API)";

// Owns a file descriptor.
class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

bool AllZeroFrom(const std::string& s, uint64_t from) {
  return from >= s.size() || s.find_first_not_of('\0', from) == s.npos;
}

// Whether a record the store could have written, with a matching checksum,
// starts at byte `pos` of `log`.
bool IsWholeRecordAt(const std::string& log, uint64_t pos) {
  if (pos + kRecordHeaderBytes > log.size()) return false;
  const uint64_t len = GetLe(log.data() + pos, 4);
  if (len == 0 || len > StateStore::kMaxRecordBytes ||
      pos + kRecordHeaderBytes + len > log.size()) {
    return false;
  }
  return Crc32c(std::string_view(log.data() + pos + kRecordHeaderBytes, len)) ==
         GetLe(log.data() + pos + 4, 4);
}

std::string Octal(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%04o", v);
  return buf;
}

absl::Status PwriteAll(int fd, std::string_view data, uint64_t offset,
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

absl::StatusOr<std::string> ReadAll(int fd, const std::string& path) {
  std::string out;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("read ", path));
    }
    if (n == 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

const char* KindOf(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  return "not a regular file";
}

absl::Status NotRegular(const std::string& path, mode_t mode) {
  return absl::DataLossError(absl::StrCat(path, ": is ", KindOf(mode),
                                          ", not a regular file", kUntouched));
}

// Opens the state file `name` of `dir_fd` (`path` in messages) with
// `flags`, never through a symlink and without blocking on a FIFO. -1 if it
// does not exist; DataLoss if it is not a regular file.
absl::StatusOr<int> OpenStateFile(int dir_fd, const char* name,
                                  const std::string& path, int flags) {
  struct stat st;
  int fd = ::openat(dir_fd, name, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT) return -1;
    if (::fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        !S_ISREG(st.st_mode)) {
      return NotRegular(path, st.st_mode);
    }
    return ErrnoStatus(e, absl::StrCat("open ", path));
  }
  UniqueFd owned(fd);
  if (::fstat(fd, &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("stat ", path));
  }
  if (!S_ISREG(st.st_mode)) return NotRegular(path, st.st_mode);
  return owned.release();
}

// What WriteAtomically got done.
struct Written {
  absl::Status status;   // OK: the new file is durably in place
  bool renamed = false;  // it replaced the old one, even if `status` is an
                         // error (the directory could not be flushed)
  int fd = -1;           // with keep_open and an OK status: the new file,
                         // open for reading and writing; the caller owns it
};

// Writes `contents` to `name` in `dir_fd` (`path` in messages) atomically:
// a temporary file created exclusively (a stale one is removed first; a
// symlink planted there is removed, never followed), fsync, rename, fsync
// of the directory. The temporary file does not survive an error.
Written WriteAtomically(int dir_fd, const std::string& path,
                        const std::string& name, const std::string& contents,
                        bool keep_open) {
  Written out;
  const std::string tmp = absl::StrCat(name, ".tmp");
  const std::string tmp_path = absl::StrCat(path, ".tmp");
  if (::unlinkat(dir_fd, tmp.c_str(), 0) != 0 && errno != ENOENT) {
    out.status = ErrnoStatus(errno, absl::StrCat("remove stale ", tmp_path));
    return out;
  }
  UniqueFd fd(::openat(dir_fd, tmp.c_str(),
                       O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                       0600));
  if (fd.get() < 0) {
    out.status = ErrnoStatus(errno, absl::StrCat("create ", tmp_path));
    return out;
  }
  out.status = PwriteAll(fd.get(), contents, 0, tmp_path);
  if (out.status.ok() && ::fsync(fd.get()) != 0) {
    out.status = ErrnoStatus(errno, absl::StrCat("fsync ", tmp_path));
  }
  if (out.status.ok() &&
      ::renameat(dir_fd, tmp.c_str(), dir_fd, name.c_str()) != 0) {
    out.status = ErrnoStatus(errno, absl::StrCat("rename to ", path));
  }
  if (!out.status.ok()) {
    ::unlinkat(dir_fd, tmp.c_str(), 0);
    return out;
  }
  out.renamed = true;
  // EINVAL: this filesystem cannot flush a directory (nor needs to).
  if (::fsync(dir_fd) != 0 && errno != EINVAL) {
    out.status = ErrnoStatus(errno, absl::StrCat("fsync the directory of ",
                                                 path, " after renaming"));
    return out;
  }
  if (keep_open) out.fd = fd.release();
  return out;
}

// Creates `dir` with `mode` (less the umask), and its missing parents with
// 0755. OK if it exists (whatever it is: the caller checks).
absl::Status MakeDir(const std::string& dir, mode_t mode) {
  if (::mkdir(dir.c_str(), mode) == 0 || errno == EEXIST) {
    return absl::OkStatus();
  }
  if (errno == ENOENT) {
    std::string parent = std::filesystem::path(dir).parent_path().string();
    if (!parent.empty() && parent.size() < dir.size()) {
      if (absl::Status st = MakeDir(parent, 0755); !st.ok()) return st;
      if (::mkdir(dir.c_str(), mode) == 0 || errno == EEXIST) {
        return absl::OkStatus();
      }
    }
  }
  return ErrnoStatus(errno, absl::StrCat("create directory ", dir));
}

// Takes `<dir>/lock` for this process: an exclusive flock, and its pid in
// the file for the message another process gets.
absl::StatusOr<UniqueFd> LockStateDir(int dir_fd, const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / kLockName).string();
  UniqueFd fd(::openat(dir_fd, kLockName,
                       O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
                       0600));
  if (fd.get() < 0) {
    if (errno == ELOOP) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, " is a symbolic link; remove it"));
    }
    return ErrnoStatus(errno, absl::StrCat("open ", path));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is ", KindOf(st.st_mode), "; remove it"));
  }
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) {
      return ErrnoStatus(errno, absl::StrCat("lock ", path));
    }
    // The holder writes its pid just after it takes the lock.
    std::string pid;
    for (int i = 0; i < 20 && pid.empty(); ++i) {
      if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      char buf[32];
      ssize_t n = ::pread(fd.get(), buf, sizeof(buf), 0);
      for (ssize_t k = 0; k < n && buf[k] >= '0' && buf[k] <= '9'; ++k) {
        pid.push_back(buf[k]);
      }
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "state directory ", dir, " is in use by another nbdmgrd (",
        pid.empty() ? "pid unknown" : absl::StrCat("pid ", pid), ")"));
  }
  // Best effort: the pid only makes that message clearer.
  std::string pid = absl::StrCat(::getpid(), "\n");
  if (::ftruncate(fd.get(), 0) == 0) {
    (void)PwriteAll(fd.get(), pid, 0, path);
  }
  return fd;
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

// An empty log of `generation`: its header, then zeroes written out (not
// just allocated), so a record later overwrites blocks the file already has.
std::string EmptyLog(uint64_t generation) {
  std::string log(StateStore::kLogBytes, '\0');
  std::memcpy(log.data(), kLogMagic, sizeof(kLogMagic));
  std::string gen;
  PutLe(gen, generation, 8);
  std::memcpy(log.data() + 8, gen.data(), 8);
  return log;
}

}  // namespace

absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& contents) {
  std::filesystem::path p(path);
  const std::string dir =
      p.has_parent_path() ? p.parent_path().string() : std::string(".");
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() < 0) return ErrnoStatus(errno, absl::StrCat("open ", dir));
  return WriteAtomically(dir_fd.get(), path, p.filename().string(), contents,
                         /*keep_open=*/false)
      .status;
}

absl::StatusOr<std::unique_ptr<StateStore>> StateStore::Open(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (dir.empty()) {
    return absl::InvalidArgumentError("state directory: empty path");
  }
  if (absl::Status st = MakeDir(dir, 0700); !st.ok()) {
    return absl::Status(st.code(),
                        absl::StrCat("state directory: ", st.message()));
  }
  // Follows a symlink to the directory; the checks are on what was opened.
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() < 0) {
    if (errno == ENOTDIR) {
      return absl::FailedPreconditionError(absl::StrCat(
          "state directory ", dir,
          " is not a directory; move it away or use another --state-dir"));
    }
    return ErrnoStatus(errno, absl::StrCat("state directory ", dir));
  }
  struct stat st;
  if (::fstat(dir_fd.get(), &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("state directory ", dir));
  }
  // Like ssh's StrictModes: whoever else can write to the directory can
  // replace the state, and through it what nbdmgrd serves.
  if (st.st_uid != ::geteuid()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "state directory ", dir, " is owned by uid ", st.st_uid,
        ", not by uid ", ::geteuid(),
        " that nbdmgrd runs as, so its owner could replace the state; "
        "chown it or use another --state-dir"));
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "state directory ", dir, " is group- or world-writable (mode ",
        Octal(st.st_mode & 07777),
        "), so other users could replace the state; run chmod go-w ", dir,
        " or use another --state-dir"));
  }
  absl::StatusOr<UniqueFd> lock = LockStateDir(dir_fd.get(), dir);
  if (!lock.ok()) return lock.status();
  return std::unique_ptr<StateStore>(
      new StateStore(std::move(dir), dir_fd.release(), lock->release()));
}

StateStore::StateStore(std::string dir, int dir_fd, int lock_fd)
    : dir_(std::move(dir)),
      path_((std::filesystem::path(dir_) / kSnapshotName).string()),
      log_path_((std::filesystem::path(dir_) / kLogName).string()),
      dir_fd_(dir_fd),
      lock_fd_(lock_fd) {}

StateStore::~StateStore() {
  CloseLog();
  ::close(lock_fd_);  // releases the lock
  ::close(dir_fd_);
}

void StateStore::CloseLog() {
  if (log_fd_ >= 0) ::close(log_fd_);
  log_fd_ = -1;
  log_end_ = 0;
  log_dirty_end_ = 0;
}

absl::StatusOr<StateStore::ExportMap> StateStore::LoadSnapshot() {
  ExportMap out;
  generation_ = 0;
  snapshot_exists_ = false;
  absl::StatusOr<int> opened =
      OpenStateFile(dir_fd_, kSnapshotName, path_, O_RDONLY);
  if (!opened.ok()) return opened.status();
  if (*opened < 0) return out;  // nothing saved yet (the log must agree)
  UniqueFd fd(*opened);
  absl::StatusOr<std::string> text = ReadAll(fd.get(), path_);
  if (!text.ok()) return text.status();
  if (text->empty()) {
    return absl::DataLossError(absl::StrCat(
        path_, ": empty, but nbdmgrd never writes an empty state file",
        kUntouched));
  }
  v1::PersistedState state;
  if (!google::protobuf::TextFormat::ParseFromString(*text, &state)) {
    return absl::DataLossError(
        absl::StrCat(path_, ": not a valid state file", kUntouched));
  }
  for (const v1::Export& p : state.exports()) {
    absl::StatusOr<ExportConfig> c = ConfigFromPersisted(p);
    if (!c.ok()) {
      return absl::DataLossError(
          absl::StrCat(path_, ": ", c.status().message(), kUntouched));
    }
    out[c->name] = std::move(*c);
  }
  generation_ = state.log_generation();
  snapshot_exists_ = true;
  return out;
}

// Only one record is written at a time, into a log preallocated with
// zeroes: after the last record, every byte is zero. A record that fails its
// checksum with only zeroes after it was cut short by a crash (its write
// was never acknowledged) and is dropped. A bad record with anything after
// it is corruption: dropping it would silently drop the acknowledged
// changes after it too, so Load fails and nothing is written. "After it"
// is past its claimed length, which is bounded (kMaxRecordBytes) and may
// itself be corrupt: a whole record with a matching checksum inside that
// length is corruption too. (A crash that kept a later sector of a record
// but lost the one with its header looks like corruption as well; stopping
// is the safe side of that rare case.)
absl::Status StateStore::ReplayLog(ExportMap& exports) {
  absl::StatusOr<int> opened =
      OpenStateFile(dir_fd_, kLogName, log_path_, O_RDWR);
  if (!opened.ok()) return opened.status();
  if (*opened < 0) return absl::OkStatus();  // the next change compacts
  UniqueFd fd(*opened);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("stat ", log_path_));
  }
  if (static_cast<uint64_t>(st.st_size) != kLogBytes) {
    return absl::DataLossError(absl::StrCat(log_path_, ": ", st.st_size,
                                            " bytes, but a state log has ",
                                            kLogBytes, kUntouched));
  }
  absl::StatusOr<std::string> read = ReadAll(fd.get(), log_path_);
  if (!read.ok()) return read.status();
  const std::string& log = *read;
  const uint64_t generation =
      log.size() < kLogHeaderBytes ? 0 : GetLe(log.data() + 8, 8);
  if (log.size() != kLogBytes ||
      log.compare(0, sizeof(kLogMagic), kLogMagic, sizeof(kLogMagic)) != 0 ||
      generation == 0) {
    return absl::DataLossError(
        absl::StrCat(log_path_, ": not a valid state log", kUntouched));
  }
  if (!snapshot_exists_) {
    return absl::DataLossError(absl::StrCat(
        path_, " is missing, but ", log_path_, " (generation ", generation,
        ") continues a snapshot: the snapshot was lost", kUntouched));
  }
  if (generation > generation_) {
    return absl::DataLossError(absl::StrCat(
        path_, " (generation ", generation_, ") is older than ", log_path_,
        " (generation ", generation,
        "): the snapshot was replaced by an older copy", kUntouched));
  }
  if (generation < generation_) {
    return absl::OkStatus();  // compacted into the snapshot already
  }
  auto corrupt = [&](uint64_t pos, absl::string_view why) {
    return absl::DataLossError(absl::StrCat(
        log_path_, ": corrupt record at byte ", pos, " (", why,
        "); the changes recorded from there on cannot be read", kUntouched));
  };
  uint64_t pos = kLogHeaderBytes;
  uint64_t dirty_end = pos;
  for (;;) {
    if (pos + kRecordHeaderBytes > log.size()) {
      if (!AllZeroFrom(log, pos))
        return corrupt(pos, "data past the last record");
      break;
    }
    const uint64_t len = GetLe(log.data() + pos, 4);
    const uint32_t crc = static_cast<uint32_t>(GetLe(log.data() + pos + 4, 4));
    if (len == 0 && crc == 0) {  // the end of the log
      if (!AllZeroFrom(log, pos)) {
        return corrupt(pos, "an empty record header with data after it");
      }
      break;
    }
    // The store writes no record of this size, torn or not.
    if (len == 0 || len > kMaxRecordBytes ||
        pos + kRecordHeaderBytes + len > log.size()) {
      return corrupt(pos, absl::StrCat("impossible length ", len));
    }
    std::string_view payload(log.data() + pos + kRecordHeaderBytes, len);
    const uint64_t end = pos + kRecordHeaderBytes + len;
    if (Crc32c(payload) != crc) {
      if (!AllZeroFrom(log, end)) {
        return corrupt(pos,
                       "checksum mismatch, and data follows it, so it was not "
                       "cut short by a crash");
      }
      // Its length may be what is corrupt, and long enough to cover the
      // records after it: a whole record inside it means exactly that.
      for (uint64_t q = pos + 1; q < end; ++q) {
        if (IsWholeRecordAt(log, q)) {
          return corrupt(pos, absl::StrCat("checksum mismatch, and a whole "
                                           "record follows it at byte ",
                                           q));
        }
      }
      spdlog::warn(
          "{}: dropped the record at byte {}: it was cut short by a crash "
          "before it was acknowledged",
          log_path_, pos);
      dirty_end = end;
      break;
    }
    v1::StateChange change;
    if (!change.ParseFromArray(payload.data(), static_cast<int>(len))) {
      return corrupt(pos, "its checksum matches but it does not parse");
    }
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
      return absl::DataLossError(absl::StrCat(log_path_, ": record at byte ",
                                              pos, ": ", bad.message(),
                                              kUntouched));
    }
    pos = end;
    dirty_end = pos;
  }
  log_fd_ = fd.release();
  log_end_ = pos;
  log_dirty_end_ = dirty_end;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ExportConfig>> StateStore::Load() {
  CloseLog();
  loaded_ = false;
  absl::StatusOr<ExportMap> exports = LoadSnapshot();
  if (!exports.ok()) return exports.status();
  if (absl::Status st = ReplayLog(*exports); !st.ok()) {
    CloseLog();
    return st;
  }
  exports_ = *exports;
  loaded_ = true;
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
  if (!loaded_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the state in ", dir_, " was not loaded; it is not overwritten"));
  }
  ExportMap next;
  for (const ExportConfig& c : exports) next[c.name] = c;
  return Compact(std::move(next));
}

absl::Status StateStore::Apply(const v1::StateChange& change,
                               absl::FunctionRef<void(ExportMap&)> mutate) {
  if (!loaded_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the state in ", dir_, " was not loaded; it is not overwritten"));
  }
  std::string payload = change.SerializeAsString();
  if (log_fd_ < 0 || must_compact_ || payload.size() > kMaxRecordBytes ||
      log_end_ + kRecordHeaderBytes + payload.size() > kLogBytes) {
    // No log to append to, it is full, or the change is too big for it: a
    // new snapshot takes the change.
    ExportMap next = exports_;
    mutate(next);
    return Compact(std::move(next));
  }
  std::string record;
  PutLe(record, payload.size(), 4);
  PutLe(record, Crc32c(payload), 4);
  record += payload;
  const uint64_t record_end = log_end_ + record.size();
  // A torn record dropped by Load may reach past this one: its remains
  // would look like corruption behind the new record, so they are zeroed
  // and flushed first (a crash between the two writes then leaves a log
  // that still loads).
  if (log_dirty_end_ > log_end_) {
    const std::string zeroes(log_dirty_end_ - log_end_, '\0');
    absl::Status cleared = PwriteAll(log_fd_, zeroes, log_end_, log_path_);
    if (cleared.ok() && ::fdatasync(log_fd_) != 0) {
      cleared = ErrnoStatus(errno, absl::StrCat("fdatasync ", log_path_));
    }
    if (!cleared.ok()) return cleared;  // nothing of this change written
    log_dirty_end_ = log_end_;
  }
  absl::Status st = PwriteAll(log_fd_, record, log_end_, log_path_);
  if (st.ok() && ::fdatasync(log_fd_) != 0) {
    st = ErrnoStatus(errno, absl::StrCat("fdatasync ", log_path_));
  }
  if (st.ok()) {
    log_end_ = record_end;
    log_dirty_end_ = record_end;
    mutate(exports_);
    return st;
  }
  // The record may be on disk in part or in whole: overwrite it with zeroes
  // (blocks the file already has, no new space) so it is never replayed.
  const std::string zeroes(record.size(), '\0');
  absl::Status erased = PwriteAll(log_fd_, zeroes, log_end_, log_path_);
  if (erased.ok() && ::fdatasync(log_fd_) != 0) {
    erased = ErrnoStatus(errno, absl::StrCat("fdatasync ", log_path_));
  }
  if (!erased.ok()) must_compact_ = true;
  // A new snapshot of exports_ retires this log (and its blocks). If it
  // fails, the log stays closed and the next change compacts again.
  absl::Status compacted = Compact(exports_);
  if (!erased.ok() && !compacted.ok()) {
    spdlog::error(
        "{}: a failed record could not be erased ({}) nor the state "
        "rewritten ({}); changes are refused until it can be",
        log_path_, ToStd(erased.message()), ToStd(compacted.message()));
    return absl::Status(
        st.code(),
        absl::StrCat(st.message(), "; the failed record could not be erased (",
                     erased.message(),
                     "), so changes are refused until the "
                     "state can be rewritten"));
  }
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
  Written snapshot = WriteAtomically(
      dir_fd_, path_, kSnapshotName,
      absl::StrCat(
          "# nbdmgrd exports created over the API (with exports.log, the "
          "changes since). Written by nbdmgrd.\n",
          text),
      /*keep_open=*/false);
  if (!snapshot.status.ok()) {
    if (snapshot.renamed) {
      // The new snapshot is in place but may not survive a crash. Keep the
      // set as it was reported; the next change rewrites the snapshot
      // (the generations keep increasing either way).
      generation_ = generation;
      snapshot_exists_ = true;
      must_compact_ = true;
    }
    return snapshot.status;
  }
  // Durable from here: the snapshot holds the whole set, and the old log,
  // of an older generation, is ignored from now on.
  generation_ = generation;
  snapshot_exists_ = true;
  must_compact_ = false;
  exports_ = std::move(exports);
  Written log = WriteAtomically(dir_fd_, log_path_, kLogName,
                                EmptyLog(generation), /*keep_open=*/true);
  if (!log.status.ok()) {
    spdlog::warn(
        "no new state log ({}): {} holds every change, and the next change "
        "writes a new snapshot",
        ToStd(log.status.message()), path_);
    return absl::OkStatus();
  }
  log_fd_ = log.fd;
  log_end_ = kLogHeaderBytes;
  log_dirty_end_ = log_end_;
  return absl::OkStatus();
}

}  // namespace nbdmgr
