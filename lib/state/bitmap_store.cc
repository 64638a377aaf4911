#include "lib/state/bitmap_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "lib/state/state_store.h"
#include "lib/util/crc32c.h"
#include "lib/util/errors.h"
#include "lib/util/little_endian.h"
#include "lib/util/strings.h"

namespace nbdmgr {
namespace {

constexpr char kMagic[] = "NBDMGRBS";
constexpr uint32_t kVersion = 1;
constexpr uint32_t kActive = 1, kConsistent = 2, kHasBits = 4;
constexpr uint32_t kMaxString = 1024;
// What one serialized bitmap may take: its words and a small header.
constexpr uint64_t kMaxBits = BitmapSet::kMaxBitmapBytes + 4096;
// The largest file an export of `size` bytes can have: every bitmap at the
// finest granularity. Checked before the file is read.
uint64_t MaxFileFor(uint64_t size) {
  const uint64_t bits = std::min<uint64_t>(
      kMaxBits, size / DirtyBitmap::kMinGranularity / 8 + 4096);
  return BitmapSet::kMaxBitmaps * (bits + 3 * kMaxString + 64) + 4096;
}

void PutString(std::string& out, std::string_view s) {
  PutLe(out, s.size(), 4);
  out.append(s);
}

// Reads what Write wrote; every read is bounds-checked.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool Le(uint64_t* v, int bytes) {
    if (in_.size() - pos_ < static_cast<size_t>(bytes)) return false;
    *v = GetLe(in_.data() + pos_, bytes);
    pos_ += bytes;
    return true;
  }
  bool Bytes(uint64_t n, std::string_view* out) {
    if (in_.size() - pos_ < n) return false;
    *out = in_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  bool String(std::string* out) {
    uint64_t n;
    std::string_view s;
    if (!Le(&n, 4) || n > kMaxString || !Bytes(n, &s)) return false;
    *out = std::string(s);
    return true;
  }
  bool done() const { return pos_ == in_.size(); }

 private:
  std::string_view in_;
  size_t pos_ = 0;
};

}  // namespace

std::string BitmapStore::PathOf(const std::string& export_name) const {
  return absl::StrCat(dir_, "/", export_name, ".bitmaps");
}

absl::Status BitmapStore::CheckDir() const {
  struct stat st;
  if (::lstat(dir_.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoStatus(errno, absl::StrCat("stat ", dir_));
  }
  if (!S_ISDIR(st.st_mode) || st.st_uid != ::geteuid() ||
      (st.st_mode & 022) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir_,
        " must be a directory (not a symbolic link) owned by this user "
        "and writable by no one else"));
  }
  return absl::OkStatus();
}

absl::Status BitmapStore::Write(const std::string& export_name,
                                const std::vector<BitmapRecord>& records,
                                const std::optional<std::string>& identity,
                                bool clean) {
  if (absl::Status st = CheckDir(); !st.ok()) return st;
  if (records.empty()) return Remove(export_name);
  if (::mkdir(dir_.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, absl::StrCat("create ", dir_));
  }
  if (absl::Status st = CheckDir(); !st.ok()) return st;
  // bit 0: saved at a clean stop; bit 1: with the backend's identity (only
  // then are bits saved).
  const bool with_bits = clean && identity.has_value();
  std::string out(kMagic, 8);
  PutLe(out, kVersion, 4);
  PutLe(out, (clean ? 1 : 0) | (with_bits ? 2 : 0), 4);
  PutString(out, with_bits ? *identity : "");
  PutLe(out, records.size(), 4);
  for (const BitmapRecord& r : records) {
    const bool bits = with_bits && r.consistent && r.bits != nullptr;
    PutString(out, r.name);
    PutLe(out,
          (r.active ? kActive : 0) | (r.consistent ? kConsistent : 0) |
              (bits ? kHasBits : 0),
          4);
    PutLe(out, r.granularity, 8);
    PutString(out, r.inconsistent_reason.substr(0, kMaxString));
    if (bits) {
      std::string b = r.bits->Serialize();
      PutLe(out, b.size(), 8);
      out.append(b);
    } else {
      PutLe(out, 0, 8);
    }
  }
  PutLe(out, Crc32c(out), 4);
  return WriteFileAtomically(PathOf(export_name), out);
}

absl::Status BitmapStore::SaveInUse(const std::string& export_name,
                                    const std::vector<BitmapRecord>& records) {
  return Write(export_name, records, std::nullopt, /*clean=*/false);
}

absl::Status BitmapStore::SaveClean(
    const std::string& export_name, const std::vector<BitmapRecord>& records,
    const std::optional<std::string>& identity) {
  return Write(export_name, records, identity, /*clean=*/true);
}

absl::StatusOr<std::vector<BitmapRecord>> BitmapStore::Load(
    const std::string& export_name, uint64_t size,
    const std::optional<std::string>& identity) const {
  if (absl::Status st = CheckDir(); !st.ok()) return st;
  const std::string path = PathOf(export_name);
  const int fd =
      ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::vector<BitmapRecord>{};
    return ErrnoStatus(errno, absl::StrCat("open ", path));
  }
  std::string data;
  absl::Status st;
  struct stat sb;
  if (::fstat(fd, &sb) != 0) {
    st = ErrnoStatus(errno, absl::StrCat("stat ", path));
  } else if (!S_ISREG(sb.st_mode)) {
    st = absl::DataLossError(absl::StrCat(path, ": not a regular file"));
  } else if (static_cast<uint64_t>(sb.st_size) > MaxFileFor(size)) {
    st = absl::DataLossError(
        absl::StrCat(path, ": ", sb.st_size, " bytes, more than any bitmaps"));
  } else {
    data.resize(static_cast<size_t>(sb.st_size));
    size_t done = 0;
    while (st.ok() && done < data.size()) {
      ssize_t n = ::read(fd, data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) st = ErrnoStatus(errno, absl::StrCat("read ", path));
      if (n == 0) data.resize(done);  // shrank meanwhile
      done += n > 0 ? static_cast<size_t>(n) : 0;
      if (n == 0) break;
    }
  }
  ::close(fd);
  if (!st.ok()) return st;
  auto corrupt = [&](std::string_view what) {
    return absl::DataLossError(absl::StrCat(path, ": ", ToAbsl(what)));
  };
  if (data.size() < 8 + 4 || data.compare(0, 8, kMagic, 8) != 0) {
    return corrupt("not a bitmap file");
  }
  const std::string_view body(data.data(), data.size() - 4);
  uint64_t crc;
  Reader tail(std::string_view(data).substr(data.size() - 4));
  tail.Le(&crc, 4);
  if (Crc32c(body) != crc) return corrupt("checksum mismatch (corrupt)");
  Reader r(body.substr(8));
  uint64_t version, clean, count;
  std::string saved_identity;
  if (!r.Le(&version, 4) || version != kVersion) {
    return corrupt("unknown version");
  }
  if (!r.Le(&clean, 4) || clean > 3 || !r.String(&saved_identity) ||
      !r.Le(&count, 4) || count > BitmapSet::kMaxBitmaps) {
    return corrupt("bad header");
  }
  std::string why_not;
  if ((clean & 1) == 0) {
    why_not =
        "nbdmgrd did not stop cleanly while recording it (a crash or "
        "SIGKILL): writes may be missing";
  } else if ((clean & 2) == 0 || !identity.has_value()) {
    why_not = "bitmaps of this export's backend are not kept across restarts";
  } else if (*identity != saved_identity) {
    why_not = "the export's file changed while nbdmgrd was stopped";
  }
  std::vector<BitmapRecord> out;
  for (uint64_t i = 0; i < count; ++i) {
    BitmapRecord rec;
    uint64_t flags, bits_len;
    std::string_view bits;
    if (!r.String(&rec.name) || !r.Le(&flags, 4) ||
        !r.Le(&rec.granularity, 8) || !r.String(&rec.inconsistent_reason) ||
        !r.Le(&bits_len, 8) || bits_len > kMaxBits ||
        !r.Bytes(bits_len, &bits)) {
      return corrupt(absl::StrCat("bitmap ", i, " is truncated or corrupt"));
    }
    rec.active = (flags & kActive) != 0;
    rec.consistent = (flags & kConsistent) != 0;
    if (rec.consistent && why_not.empty() && (flags & kHasBits)) {
      absl::StatusOr<std::unique_ptr<DirtyBitmap>> parsed =
          DirtyBitmap::Parse(bits, size);
      if (parsed.ok()) {
        rec.bits = std::move(*parsed);
      } else {
        rec.consistent = false;
        rec.inconsistent_reason = std::string(parsed.status().message());
      }
    } else if (rec.consistent) {
      rec.consistent = false;
      rec.inconsistent_reason =
          why_not.empty() ? "its bits were not saved" : why_not;
    }
    out.push_back(std::move(rec));
  }
  if (!r.done()) return corrupt("trailing bytes");
  return out;
}

absl::Status BitmapStore::Remove(const std::string& export_name) {
  const std::string path = PathOf(export_name);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoStatus(errno, absl::StrCat("remove ", path));
  }
  const int dir = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return absl::OkStatus();
}

absl::Status BitmapStore::SetAside(const std::string& export_name) {
  const std::string path = PathOf(export_name);
  const std::string aside = absl::StrCat(path, ".corrupt");
  if (::rename(path.c_str(), aside.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, absl::StrCat("rename ", path, " to ", aside));
  }
  return absl::OkStatus();
}

}  // namespace nbdmgr
