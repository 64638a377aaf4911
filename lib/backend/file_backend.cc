#include "lib/backend/file_backend.h"

#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <linux/openat2.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "lib/backend/io_ring.h"
#include "lib/util/errors.h"
#include "lib/util/size.h"

namespace nbdmgr {

// Where a file is opened: a name in a directory held open. For a confined
// path the directory was resolved beneath an allowed directory without
// following any symbolic link, and the name is opened without following one
// either, so what is opened, created or removed is always beneath it, however
// the path is renamed meanwhile. For an unconfined path (the operator's own)
// links are followed as usual.
class FileLocation {
 public:
  // The location of `path`, confined to one of `dirs` when there are any.
  static absl::StatusOr<FileLocation> Find(
      const std::string& path, const std::vector<std::string>& dirs);
  FileLocation(FileLocation&& o) noexcept
      : dir_fd_(std::exchange(o.dir_fd_, -1)),
        name_(std::move(o.name_)),
        confined_(o.confined_) {}
  FileLocation& operator=(FileLocation&&) = delete;
  ~FileLocation() {
    if (dir_fd_ >= 0) ::close(dir_fd_);
  }

  // open(2) of the name; -1 with errno set on failure (ELOOP: confined and
  // the name is a symbolic link).
  int Open(int flags, mode_t mode = 0) const {
    return ::openat(dir_fd_, name_.c_str(),
                    flags | (confined_ ? O_NOFOLLOW : 0), mode);
  }
  // Removes the name if it is still the file `fd` has open.
  void UnlinkIfStill(int fd) const {
    struct stat mine, named;
    if (::fstat(fd, &mine) == 0 &&
        ::fstatat(dir_fd_, name_.c_str(), &named, AT_SYMLINK_NOFOLLOW) == 0 &&
        mine.st_dev == named.st_dev && mine.st_ino == named.st_ino) {
      ::unlinkat(dir_fd_, name_.c_str(), 0);
    }
  }

 private:
  FileLocation(int dir_fd, std::string name, bool confined)
      : dir_fd_(dir_fd), name_(std::move(name)), confined_(confined) {}

  int dir_fd_;        // the directory holding the file
  std::string name_;  // one component, no '/'
  bool confined_;
};

namespace {

// Opens the directory `rel` (components, no "..") beneath `root` without
// following symbolic links: openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS,
// or on kernels before 5.6 one O_NOFOLLOW component at a time. -1 with
// errno set (ELOOP for a link on the way).
int OpenDirBeneath(int root, const std::filesystem::path& rel) {
  const int flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
  if (rel.empty()) return ::fcntl(root, F_DUPFD_CLOEXEC, 0);
  struct open_how how {};
  how.flags = static_cast<uint64_t>(flags);
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  int fd = static_cast<int>(
      ::syscall(SYS_openat2, root, rel.c_str(), &how, sizeof(how)));
  // No openat2 (ENOSYS), or a seccomp filter that refuses it (EPERM).
  if (fd >= 0 || (errno != ENOSYS && errno != EPERM)) return fd;
  fd = ::fcntl(root, F_DUPFD_CLOEXEC, 0);
  for (const auto& part : rel) {
    if (fd < 0) break;
    int next = ::openat(fd, part.c_str(), flags | O_NOFOLLOW);
    int err = errno;
    struct stat st;
    if (next < 0 && err == ENOTDIR &&
        ::fstatat(fd, part.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISLNK(st.st_mode)) {
      err = ELOOP;  // O_NOFOLLOW|O_DIRECTORY on a link says ENOTDIR
    }
    ::close(fd);
    fd = next;
    errno = err;
  }
  return fd;
}

}  // namespace

absl::StatusOr<FileLocation> FileLocation::Find(
    const std::string& path, const std::vector<std::string>& dirs) {
  const std::filesystem::path p(path);
  const std::string name = p.filename().string();
  if (name.empty() || name == "." || name == "..") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a path to a file"));
  }
  if (dirs.empty()) {
    std::string parent = p.parent_path().string();
    int fd = ::open(parent.empty() ? "." : parent.c_str(),
                    O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) {
        return absl::NotFoundError(
            absl::StrCat(path, ": its directory does not exist"));
      }
      return ErrnoStatus(errno, absl::StrCat("open ", parent));
    }
    return FileLocation(fd, name, false);
  }
  for (const auto& part : p) {
    if (part == "..") {
      return absl::PermissionDeniedError(
          absl::StrCat("path ", path, " contains \"..\""));
    }
  }
  const std::filesystem::path normal = p.lexically_normal();
  absl::Status first_error;
  for (const std::string& dir : dirs) {
    // The directory as given, and as it resolves (an operator may name
    // either form): trusted, so symbolic links in it are followed.
    std::vector<std::filesystem::path> forms = {
        std::filesystem::path(dir).lexically_normal()};
    char buf[PATH_MAX];
    if (::realpath(dir.c_str(), buf) != nullptr) forms.emplace_back(buf);
    for (const std::filesystem::path& form : forms) {
      std::filesystem::path rel = normal.lexically_relative(form);
      if (rel.empty() || *rel.begin() == ".." || rel == ".") continue;
      int root = ::open(form.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
      if (root < 0) continue;
      int fd = OpenDirBeneath(root, rel.parent_path());
      int err = errno;
      ::close(root);
      if (fd >= 0) return FileLocation(fd, name, true);
      // Another allowed directory (nested, or reached through a link the
      // operator set up) may still hold the path: the first error stands
      // only if none does.
      if (!first_error.ok()) continue;
      switch (err) {
        case ENOENT:
          first_error = absl::NotFoundError(
              absl::StrCat(path, ": its directory does not exist"));
          break;
        case ELOOP:
        case EXDEV:
          first_error = absl::PermissionDeniedError(absl::StrCat(
              "path ", path,
              " goes through a symbolic link, which exports created over the "
              "API may not"));
          break;
        default:
          first_error =
              ErrnoStatus(err, absl::StrCat("open directory of ", path));
      }
    }
  }
  if (!first_error.ok()) return first_error;
  return absl::PermissionDeniedError(
      absl::StrCat("path ", path, " is outside the allowed directories"));
}

namespace {

// The status of a failed FileLocation::Open of `path`.
absl::Status OpenError(int err, const std::string& path, bool create) {
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(absl::StrCat(
          path, create ? ": no such file (give a size to create it)"
                       : ": no such file"));
    case ELOOP:
      return absl::PermissionDeniedError(
          absl::StrCat("path ", path,
                       " goes through a symbolic link, which exports created "
                       "over the API may not"));
    default:
      return ErrnoStatus(err, absl::StrCat("open ", path));
  }
}

}  // namespace

std::string_view NameOf(FileIo io) {
  switch (io) {
    case FileIo::kAuto:
      return "auto";
    case FileIo::kIoUring:
      return "io_uring";
    case FileIo::kThreads:
      return "threads";
  }
  return "?";
}

absl::StatusOr<FileIo> ParseFileIo(std::string_view name) {
  for (FileIo io : {FileIo::kAuto, FileIo::kIoUring, FileIo::kThreads}) {
    if (name == NameOf(io)) return io;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("io: expected auto, io_uring or threads, got \"",
                   std::string(name), "\""));
}

absl::StatusOr<std::unique_ptr<FileBackend>> FileBackend::Open(
    const FileBackendOptions& options) {
  if (options.path.empty()) {
    return absl::InvalidArgumentError("file backend needs a path");
  }
  FileIo io = options.io;
  if (io == FileIo::kAuto) {
    io = IoRing::Supported() ? FileIo::kIoUring : FileIo::kThreads;
  } else if (io == FileIo::kIoUring && !IoRing::Supported()) {
    return absl::FailedPreconditionError(
        "io=io_uring: io_uring is not available here (kernel, "
        "kernel.io_uring_disabled or a seccomp filter); use io=threads or "
        "io=auto");
  }
  absl::StatusOr<FileLocation> where =
      FileLocation::Find(options.path, options.confine_to);
  if (!where.ok()) return where.status();
  // O_NONBLOCK: opening a FIFO or a device must not block (or wait for a
  // peer); the type is checked on the descriptor before it is used.
  const int flags = (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC |
                    O_NOCTTY | O_NONBLOCK;
  bool created = false;
  int fd = where->Open(flags);
  if (fd < 0 && errno == ENOENT && options.size.has_value() && options.create) {
    if (options.read_only) {
      return absl::NotFoundError(absl::StrCat(
          options.path, ": does not exist (and export is read-only)"));
    }
    fd = where->Open(flags | O_CREAT | O_EXCL, 0600);
    if (fd >= 0) {
      created = true;
      if (::ftruncate(fd, static_cast<off_t>(*options.size)) != 0) {
        absl::Status st =
            ErrnoStatus(errno, absl::StrCat("ftruncate ", options.path));
        where->UnlinkIfStill(fd);
        ::close(fd);
        return st;
      }
    }
  }
  if (fd < 0) return OpenError(errno, options.path, options.create);
  auto fail = [&](absl::Status st) {
    if (created) where->UnlinkIfStill(fd);
    ::close(fd);
    return st;
  };
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return fail(ErrnoStatus(errno, absl::StrCat("stat ", options.path)));
  }
  uint64_t size = 0;
  bool is_block = S_ISBLK(st.st_mode);
  if (is_block) {
    if (::ioctl(fd, BLKGETSIZE64, &size) != 0) {
      return fail(
          ErrnoStatus(errno, absl::StrCat("BLKGETSIZE64 ", options.path)));
    }
  } else if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else {
    return fail(absl::InvalidArgumentError(
        absl::StrCat(options.path, ": not a regular file or block device")));
  }
  // Checked: the descriptor is a file or a disk. Blocking from here on.
  if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
    return fail(ErrnoStatus(errno, absl::StrCat("fcntl ", options.path)));
  }
  if (options.size.has_value() && *options.size != size) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat(options.path, ": is ", size,
                     " bytes but size=", *options.size, " was given")));
  }
  if (size == 0) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat(options.path, ": is empty (size 0)")));
  }
  if (size > static_cast<uint64_t>(INT64_MAX)) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat(options.path, ": is larger than NBD allows")));
  }
  auto backend = std::unique_ptr<FileBackend>(
      new FileBackend(fd, size, is_block, options.path, io));
  if (created) {
    backend->created_in_ = std::make_unique<FileLocation>(std::move(*where));
  }
  return backend;
}

FileBackend::FileBackend(int fd, uint64_t size, bool is_block_device,
                         std::string path, FileIo io)
    : fd_(fd),
      size_(size),
      is_block_device_(is_block_device),
      path_(std::move(path)),
      io_(io),
      ring_id_(IoRing::NewFileId()) {}

void FileBackend::RemoveCreatedFile() {
  if (created_in_ != nullptr) created_in_->UnlinkIfStill(fd_);
}

FileBackend::~FileBackend() {
  if (io_ == FileIo::kIoUring) IoRing::ForgetFile(ring_id_);
  ::close(fd_);
}

BackendCaps FileBackend::caps() const {
  BackendCaps c;
  c.can_trim = true;
  c.can_zero = true;
  c.can_fast_zero = !is_block_device_;
  c.can_flush = true;
  c.can_multi_conn = true;  // one descriptor: fdatasync covers every writer
  c.can_extents = !is_block_device_;
  c.can_cache = true;
  c.blocking = true;
  c.async = io_ == FileIo::kIoUring;
  c.async_needs_ring = true;
  // Two lseek calls cost more than sending a small hole's zeroes.
  c.sparse_read_min = 64 * 1024;
  return c;
}

absl::Status FileBackend::Read(uint64_t offset, std::span<uint8_t> buf) {
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::pread(fd_, buf.data() + done, buf.size() - done,
                        static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("read ", path_));
    }
    if (n == 0) {  // file shrank under us: read the rest as zeroes
      std::fill(buf.begin() + static_cast<ptrdiff_t>(done), buf.end(), 0);
      break;
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status FileBackend::Write(uint64_t offset, std::span<const uint8_t> data,
                                bool fua) {
  bool need_sync = false;
  size_t done = 0;
  while (done < data.size()) {
    struct iovec iov {
      const_cast<uint8_t*>(data.data() + done), data.size() - done
    };
    ssize_t n = ::pwritev2(fd_, &iov, 1, static_cast<off_t>(offset + done),
                           fua && !need_sync ? RWF_DSYNC : 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (fua && !need_sync && (errno == EOPNOTSUPP || errno == EINVAL)) {
        need_sync = true;  // no RWF_DSYNC here: write, then fdatasync
        continue;
      }
      return ErrnoStatus(errno, absl::StrCat("write ", path_));
    }
    done += static_cast<size_t>(n);
    // A short RWF_DSYNC write synced only its part; the rest loops with the
    // flag again, so every byte is durable when we return.
  }
  if (need_sync) return Flush();
  return absl::OkStatus();
}

absl::Status FileBackend::Flush() {
  if (::fdatasync(fd_) != 0) {
    return ErrnoStatus(errno, absl::StrCat("fdatasync ", path_));
  }
  return absl::OkStatus();
}

// One READ, WRITE or FLUSH through a ring, kept in its completion's
// scratch space: resubmits the rest of a short transfer, and for a FUA
// write on a file system without RWF_DSYNC writes plainly, then syncs, as
// the synchronous calls do.
class FileRingOp final : public RingOp {
 public:
  enum class Kind : uint8_t { kRead, kWrite, kSync };

  FileRingOp(FileBackend& fb, IoRing& ring, IoCompletion& done, Kind kind,
             uint64_t offset, uint8_t* buf, size_t length, bool fua)
      : fb_(fb),
        ring_(ring),
        done_(done),
        offset_(offset),
        buf_(buf),
        length_(length),
        kind_(kind),
        fua_(fua) {}

  void Start() { Queue(); }

  void OnCqe(int result) override {
    if (result == -EINTR || result == -EAGAIN) return Queue();
    if (kind_ == Kind::kWrite && result < 0 && fua_ && !sync_after_ &&
        (result == -EOPNOTSUPP || result == -EINVAL)) {
      sync_after_ = true;  // no RWF_DSYNC here: write, then fdatasync
      return Queue();
    }
    if (result < 0) return Finish(ErrnoStatus(-result, What()));
    if (kind_ == Kind::kSync) return Finish(absl::OkStatus());
    if (result == 0) {
      if (kind_ == Kind::kWrite) {
        return Finish(absl::DataLossError(
            absl::StrCat(What(), ": the device accepted no bytes")));
      }
      // The file shrank under us: the rest reads as zeroes.
      std::fill(buf_ + done_bytes_, buf_ + length_, 0);
      return Finish(absl::OkStatus());
    }
    done_bytes_ += static_cast<size_t>(result);
    if (done_bytes_ < length_) return Queue();
    if (kind_ == Kind::kWrite && sync_after_) {
      kind_ = Kind::kSync;
      return Queue();
    }
    Finish(absl::OkStatus());
  }

 private:
  static constexpr size_t kMaxTransfer = 1u << 30;

  void Queue() {
    const RingFile f{fb_.fd_, fb_.ring_id_};
    const size_t n = std::min(length_ - done_bytes_, kMaxTransfer);
    switch (kind_) {
      case Kind::kRead:
        ring_.Read(f, offset_ + done_bytes_, buf_ + done_bytes_,
                   static_cast<uint32_t>(n), this);
        break;
      case Kind::kWrite:
        ring_.Write(f, offset_ + done_bytes_, buf_ + done_bytes_,
                    static_cast<uint32_t>(n),
                    fua_ && !sync_after_ ? RWF_DSYNC : 0, this);
        break;
      case Kind::kSync:
        ring_.Fdatasync(f, this);
        break;
    }
  }

  std::string What() const {
    const char* verb = kind_ == Kind::kRead    ? "read "
                       : kind_ == Kind::kWrite ? "write "
                                               : "fdatasync ";
    return absl::StrCat(verb, fb_.path_);
  }

  // The last touch of this object: `done` may free it.
  void Finish(absl::Status st) { done_.Complete(std::move(st)); }

  FileBackend& fb_;
  IoRing& ring_;
  IoCompletion& done_;
  uint64_t offset_;
  uint8_t* buf_;
  size_t length_;
  size_t done_bytes_ = 0;
  Kind kind_;
  bool fua_;
  bool sync_after_ = false;
};
static_assert(sizeof(FileRingOp) <= IoCompletion::kScratchSize);
static_assert(alignof(FileRingOp) <= alignof(std::max_align_t));
static_assert(std::is_trivially_destructible_v<FileRingOp>);

void FileBackend::ReadAsync(uint64_t offset, std::span<uint8_t> buf,
                            IoRing* ring, IoCompletion& done) {
  (new (done.scratch()) FileRingOp(*this, *ring, done, FileRingOp::Kind::kRead,
                                   offset, buf.data(), buf.size(), false))
      ->Start();
}

void FileBackend::WriteAsync(uint64_t offset, std::span<const uint8_t> data,
                             bool fua, IoRing* ring, IoCompletion& done) {
  (new (done.scratch())
       FileRingOp(*this, *ring, done, FileRingOp::Kind::kWrite, offset,
                  const_cast<uint8_t*>(data.data()), data.size(), fua))
      ->Start();
}

void FileBackend::FlushAsync(IoRing* ring, IoCompletion& done) {
  (new (done.scratch()) FileRingOp(*this, *ring, done, FileRingOp::Kind::kSync,
                                   0, nullptr, 0, false))
      ->Start();
}

absl::Status FileBackend::Trim(uint64_t offset, uint64_t length, bool fua) {
  int rc;
  if (is_block_device_) {
    uint64_t range[2] = {offset, length};
    rc = ::ioctl(fd_, BLKDISCARD, range);
  } else {
    rc = ::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                     static_cast<off_t>(offset), static_cast<off_t>(length));
  }
  if (rc != 0) {
    // TRIM is advisory: a file system or device that cannot discard simply
    // keeps the data.
    if (errno != EOPNOTSUPP && errno != ENOTTY && errno != EINVAL) {
      return ErrnoStatus(errno, absl::StrCat("discard ", path_));
    }
    return absl::OkStatus();
  }
  return fua ? Flush() : absl::OkStatus();
}

absl::Status FileBackend::Zero(uint64_t offset, uint64_t length,
                               ZeroOptions options) {
  absl::Status result = absl::OkStatus();
  bool done = false;
  if (is_block_device_) {
    if (!options.fast) {
      uint64_t range[2] = {offset, length};
      done = ::ioctl(fd_, BLKZEROOUT, range) == 0;
    }
  } else {
    if (options.may_trim) {
      done = ::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                         static_cast<off_t>(offset),
                         static_cast<off_t>(length)) == 0;
    }
    if (!done) {
      done = ::fallocate(fd_, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                         static_cast<off_t>(offset),
                         static_cast<off_t>(length)) == 0;
    }
  }
  if (!done) {
    if (options.fast) {
      return absl::UnimplementedError("fast zero not possible here");
    }
    result = WriteZeroesSlowly(offset, length);
    if (!result.ok()) return result;
  }
  return options.fua ? Flush() : absl::OkStatus();
}

absl::Status FileBackend::WriteZeroesSlowly(uint64_t offset, uint64_t length) {
  static const std::vector<uint8_t> kZeroes(1 << 20, 0);
  while (length > 0) {
    size_t n = std::min<uint64_t>(length, kZeroes.size());
    absl::Status st = Write(offset, std::span(kZeroes.data(), n), false);
    if (!st.ok()) return st;
    offset += n;
    length -= n;
  }
  return absl::OkStatus();
}

absl::Status FileBackend::Cache(uint64_t offset, uint64_t length) {
  // WILLNEED starts readahead of the range into the page cache (a block
  // device's too) and returns without waiting for it.
  int rc = ::posix_fadvise(fd_, static_cast<off_t>(offset),
                           static_cast<off_t>(length), POSIX_FADV_WILLNEED);
  if (rc != 0) return ErrnoStatus(rc, absl::StrCat("fadvise ", path_));
  return absl::OkStatus();
}

bool FileBackend::SplitZeroes(
    uint64_t pos, uint64_t end,
    absl::FunctionRef<bool(uint64_t, uint32_t)> emit) {
  constexpr uint32_t kHole = kExtentHole | kExtentZero;
  if (fiemap_unsupported_.load(std::memory_order_relaxed)) {
    return emit(end - pos, kHole);
  }
  // Room for a bounded number of extents per call; a range with more takes
  // more calls. uint64_t elements: aligned for struct fiemap.
  constexpr uint32_t kMaxExtents = 32;
  std::array<uint64_t, (sizeof(struct fiemap) +
                        kMaxExtents * sizeof(struct fiemap_extent)) /
                           sizeof(uint64_t)>
      buf;
  auto* fm = reinterpret_cast<struct fiemap*>(buf.data());
  while (pos < end) {
    const uint64_t start = pos;
    std::memset(fm, 0, sizeof(*fm));
    fm->fm_start = pos;
    fm->fm_length = end - pos;
    fm->fm_extent_count = kMaxExtents;
    // No FIEMAP_FLAG_SYNC: only allocation is asked here, and dirty pages
    // of this range (delayed allocation) would have made SEEK report data.
    if (::ioctl(fd_, FS_IOC_FIEMAP, fm) != 0) {
      if (errno == EOPNOTSUPP || errno == ENOTTY) {
        fiemap_unsupported_.store(true, std::memory_order_relaxed);
      }
      return emit(end - pos, kHole);  // allocation unknown: as before
    }
    const uint32_t n = std::min(fm->fm_mapped_extents, kMaxExtents);
    bool last = n < kMaxExtents;
    for (uint32_t i = 0; i < n && pos < end; ++i) {
      const struct fiemap_extent& e = fm->fm_extents[i];
      if (e.fe_flags & FIEMAP_EXTENT_LAST) last = true;
      const uint64_t from = std::max<uint64_t>(e.fe_logical, pos);
      const uint64_t to = std::min<uint64_t>(e.fe_logical + e.fe_length, end);
      if (to <= from) continue;
      if (from > pos && !emit(from - pos, kHole)) return false;
      // Allocated (an unwritten extent, typically) and reading as zeroes.
      if (!emit(to - from, kExtentZero)) return false;
      pos = to;
    }
    // A full reply: ask again from where it ended (one that made no
    // progress ends the walk; the rest counts as a hole).
    if (last || pos == start) break;
  }
  return pos >= end || emit(end - pos, kHole);
}

absl::Status FileBackend::Extents(uint64_t offset, uint64_t length,
                                  absl::FunctionRef<bool(Extent)> visit) {
  return ExtentsOf(offset, length, /*split_zeroes=*/true, visit);
}

absl::Status FileBackend::ReadExtents(uint64_t offset, uint64_t length,
                                      absl::FunctionRef<bool(Extent)> visit) {
  return ExtentsOf(offset, length, /*split_zeroes=*/false, visit);
}

absl::Status FileBackend::ExtentsOf(uint64_t offset, uint64_t length,
                                    bool split_zeroes,
                                    absl::FunctionRef<bool(Extent)> visit) {
  if (is_block_device_) {
    visit(Extent{length, 0});
    return absl::OkStatus();
  }
  // SEEK_DATA/SEEK_HOLE decide what reads as zeroes: they count dirty page
  // cache as data, so a write not yet written back is never reported as
  // zero (FIEMAP alone would call it an unwritten extent).
  constexpr uint32_t kHole = kExtentHole | kExtentZero;
  Extent pending{0, 0};
  auto emit = [&](uint64_t n, uint32_t flags) {
    if (n == 0) return true;
    if (pending.length > 0 && pending.flags != flags) {
      if (!visit(pending)) return false;
      pending = Extent{0, 0};
    }
    pending.flags = flags;
    pending.length += n;
    return true;
  };
  auto zeroes = [&](uint64_t from, uint64_t to) {
    return split_zeroes ? SplitZeroes(from, to, emit) : emit(to - from, kHole);
  };
  const uint64_t end = offset + length;
  uint64_t pos = offset;
  while (pos < end) {
    off_t data = ::lseek(fd_, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      // ENXIO: no data from pos to the end of the file. Else SEEK_DATA is
      // unsupported: what is left is data.
      const bool go_on = errno == ENXIO ? zeroes(pos, end) : emit(end - pos, 0);
      if (!go_on) return absl::OkStatus();
      break;
    }
    uint64_t data_start = static_cast<uint64_t>(data);
    if (data_start > pos) {
      uint64_t hole_end = std::min(data_start, end);
      if (!zeroes(pos, hole_end)) return absl::OkStatus();
      pos = hole_end;
      continue;
    }
    off_t hole = ::lseek(fd_, static_cast<off_t>(pos), SEEK_HOLE);
    uint64_t data_end = hole < 0 ? end : std::min<uint64_t>(hole, end);
    if (data_end <= pos) data_end = end;  // defensive: always progress
    if (!emit(data_end - pos, 0)) return absl::OkStatus();
    pos = data_end;
  }
  if (pending.length > 0) visit(pending);
  return absl::OkStatus();
}

std::optional<std::string> FileBackend::DurableIdentity() const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) return std::nullopt;
  // A block device's node does not change when the device is written
  // (through another node, a filesystem, dm, another host): no identity.
  if (S_ISBLK(st.st_mode)) return std::nullopt;
  return absl::StrCat("file dev=", st.st_dev, " rdev=", st.st_rdev,
                      " ino=", st.st_ino, " size=", st.st_size,
                      " mtime=", st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec);
}

}  // namespace nbdmgr
