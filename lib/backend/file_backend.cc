#include "lib/backend/file_backend.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "absl/strings/str_cat.h"
#include "lib/nbd/wire.h"
#include "lib/util/errors.h"
#include "lib/util/size.h"

namespace nbdmgr {

absl::StatusOr<std::unique_ptr<FileBackend>> FileBackend::Open(
    const FileBackendOptions& options) {
  if (options.path.empty()) {
    return absl::InvalidArgumentError("file backend needs a path");
  }
  int flags = (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  int fd = ::open(options.path.c_str(), flags);
  if (fd < 0 && errno == ENOENT && options.size.has_value() && options.create) {
    if (options.read_only) {
      return absl::NotFoundError(absl::StrCat(
          options.path, ": does not exist (and export is read-only)"));
    }
    fd = ::open(options.path.c_str(), flags | O_CREAT | O_EXCL, 0600);
    if (fd >= 0 && ::ftruncate(fd, static_cast<off_t>(*options.size)) != 0) {
      absl::Status st =
          ErrnoStatus(errno, absl::StrCat("ftruncate ", options.path));
      ::close(fd);
      ::unlink(options.path.c_str());
      return st;
    }
  }
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) {
      return absl::NotFoundError(absl::StrCat(
          options.path, options.create
                            ? ": no such file (give a size to create it)"
                            : ": no such file"));
    }
    return ErrnoStatus(err, absl::StrCat("open ", options.path));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    absl::Status s = ErrnoStatus(errno, absl::StrCat("stat ", options.path));
    ::close(fd);
    return s;
  }
  uint64_t size = 0;
  bool is_block = S_ISBLK(st.st_mode);
  if (is_block) {
    if (::ioctl(fd, BLKGETSIZE64, &size) != 0) {
      absl::Status s =
          ErrnoStatus(errno, absl::StrCat("BLKGETSIZE64 ", options.path));
      ::close(fd);
      return s;
    }
  } else if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(options.path, ": not a regular file or block device"));
  }
  if (options.size.has_value() && *options.size != size) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(options.path, ": is ", size,
                     " bytes but size=", *options.size, " was given"));
  }
  if (size == 0) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(options.path, ": is empty (size 0)"));
  }
  return std::unique_ptr<FileBackend>(
      new FileBackend(fd, size, is_block, options.path));
}

FileBackend::FileBackend(int fd, uint64_t size, bool is_block_device,
                         std::string path)
    : fd_(fd),
      size_(size),
      is_block_device_(is_block_device),
      path_(std::move(path)) {}

FileBackend::~FileBackend() { ::close(fd_); }

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
  int rc = ::posix_fadvise(fd_, static_cast<off_t>(offset),
                           static_cast<off_t>(length), POSIX_FADV_WILLNEED);
  if (rc != 0) return ErrnoStatus(rc, absl::StrCat("fadvise ", path_));
  return absl::OkStatus();
}

absl::Status FileBackend::Extents(uint64_t offset, uint64_t length,
                                  absl::FunctionRef<bool(Extent)> visit) {
  if (is_block_device_) {
    visit(Extent{length, 0});
    return absl::OkStatus();
  }
  const uint64_t end = offset + length;
  uint64_t pos = offset;
  while (pos < end) {
    off_t data = ::lseek(fd_, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) {  // no data from pos to end of file
        visit(Extent{end - pos, nbd::kStateHole | nbd::kStateZero});
        return absl::OkStatus();
      }
      // SEEK_DATA unsupported: report what is left as data.
      visit(Extent{end - pos, 0});
      return absl::OkStatus();
    }
    uint64_t data_start = static_cast<uint64_t>(data);
    if (data_start > pos) {
      uint64_t hole_end = std::min(data_start, end);
      if (!visit(Extent{hole_end - pos, nbd::kStateHole | nbd::kStateZero})) {
        return absl::OkStatus();
      }
      pos = hole_end;
      continue;
    }
    off_t hole = ::lseek(fd_, static_cast<off_t>(pos), SEEK_HOLE);
    uint64_t data_end = hole < 0 ? end : std::min<uint64_t>(hole, end);
    if (data_end <= pos) data_end = end;  // defensive: always progress
    if (!visit(Extent{data_end - pos, 0})) return absl::OkStatus();
    pos = data_end;
  }
  return absl::OkStatus();
}

}  // namespace nbdmgr
