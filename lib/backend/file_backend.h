#ifndef NBDMGR_LIB_BACKEND_FILE_BACKEND_H_
#define NBDMGR_LIB_BACKEND_FILE_BACKEND_H_

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/backend/backend.h"

namespace nbdmgr {

// How a file export does its I/O: through the io thread's io_uring (no
// thread hop per request), or on the blocking thread pool (kernels or
// sandboxes without io_uring). kAuto takes io_uring when it works here.
enum class FileIo { kAuto, kIoUring, kThreads };
std::string_view NameOf(FileIo io);  // "auto", "io_uring", "threads"
// InvalidArgument listing the valid names.
absl::StatusOr<FileIo> ParseFileIo(std::string_view name);

struct FileBackendOptions {
  std::string path;
  bool read_only = false;
  // When set and the file does not exist (and `create`, and not
  // `read_only`), it is created (sparse) with this size. When set and the
  // file exists, its size must match.
  std::optional<uint64_t> size;
  bool create = true;
  // Non-empty: `path` must lie beneath one of these directories and is
  // resolved without following any symbolic link below it (openat2 with
  // RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), so what is opened is what was
  // checked, whatever is renamed meanwhile. Exports created over the API.
  std::vector<std::string> confine_to = {};
  // kIoUring where io_uring is unavailable is refused (FailedPrecondition).
  FileIo io = FileIo::kAuto;
};

class FileLocation;  // a name in a directory held open (file_backend.cc)

// A regular file or block device. FLUSH is fdatasync, FUA writes use
// RWF_DSYNC, TRIM punches holes, WRITE_ZEROES uses fallocate (or
// BLKZEROOUT on a block device), CACHE is posix_fadvise(WILLNEED), and
// block status comes from SEEK_DATA/SEEK_HOLE (what reads as zeroes) and,
// within the zeroes, FIEMAP (which of them are allocated: a NO_HOLE
// WRITE_ZEROES leaves unwritten extents). Calls block on I/O (caps().blocking):
// the NBD layer runs them on a thread pool, except READ, WRITE and FLUSH with
// io_uring (caps().async), which it queues on the io thread's ring.
// Thread-safe: positional I/O on one descriptor.
class FileBackend final : public Backend {
 public:
  // NotFound if its directory is missing, or the file is and may not be
  // created (no size, `create` false, or read-only); InvalidArgument for an
  // empty path or one without a file name, a size mismatch, an empty file,
  // one larger than NBD allows (INT64_MAX), or a path that is neither a
  // regular file nor a block device (a FIFO, socket or character device is
  // refused without blocking: it is opened O_NONBLOCK and checked on the
  // descriptor); with `confine_to`, PermissionDenied for a path outside it,
  // holding "..", or through a symbolic link; the errno-derived status if
  // open fails. A file it created is removed again on any error.
  static absl::StatusOr<std::unique_ptr<FileBackend>> Open(
      const FileBackendOptions& options);
  ~FileBackend() override;

  // Whether Open created the file.
  bool created_file() const { return created_in_ != nullptr; }
  // Removes the file Open created (undoing a create that could not be
  // committed), if its name in the directory it was created in (held
  // open, so never a directory a link was swapped in for) still names it.
  // No-op otherwise.
  void RemoveCreatedFile();

  // What the export's READ, WRITE and FLUSH use: kIoUring or kThreads.
  FileIo io() const { return io_; }

  uint64_t size() const override { return size_; }
  // The file's device, inode, size and modification time; none for a
  // block device (writes to it elsewhere would not show).
  std::optional<std::string> DurableIdentity() const override;
  BackendCaps caps() const override;
  absl::Status Read(uint64_t offset, std::span<uint8_t> buf) override;
  absl::Status Write(uint64_t offset, std::span<const uint8_t> data,
                     bool fua) override;
  absl::Status Flush() override;
  void ReadAsync(uint64_t offset, std::span<uint8_t> buf, IoRing* ring,
                 IoCompletion& done) override;
  void WriteAsync(uint64_t offset, std::span<const uint8_t> data, bool fua,
                  IoRing* ring, IoCompletion& done) override;
  void FlushAsync(IoRing* ring, IoCompletion& done) override;
  absl::Status Trim(uint64_t offset, uint64_t length, bool fua) override;
  absl::Status Zero(uint64_t offset, uint64_t length,
                    ZeroOptions options) override;
  absl::Status Cache(uint64_t offset, uint64_t length) override;
  // Data (0) where SEEK_DATA says so, dirty page cache included; in the
  // rest, allocated blocks (FIEMAP) as kExtentZero and unallocated ones as
  // kExtentHole | kExtentZero. Where FIEMAP is unsupported (tmpfs, NFS,
  // FUSE) every zero range is a hole. A block device is all data.
  absl::Status Extents(uint64_t offset, uint64_t length,
                       absl::FunctionRef<bool(Extent)> visit) override;
  // Extents() without FIEMAP: every zero range is reported as a hole.
  absl::Status ReadExtents(uint64_t offset, uint64_t length,
                           absl::FunctionRef<bool(Extent)> visit) override;

 private:
  friend class FileRingOp;
  FileBackend(int fd, uint64_t size, bool is_block_device, std::string path,
              FileIo io);
  absl::Status WriteZeroesSlowly(uint64_t offset, uint64_t length);
  // Extents() (`split_zeroes`: zero ranges split by FIEMAP) or
  // ReadExtents().
  absl::Status ExtentsOf(uint64_t offset, uint64_t length, bool split_zeroes,
                         absl::FunctionRef<bool(Extent)> visit);
  // Calls emit(length, flags) for [pos, end), a range that reads as
  // zeroes, split into allocated (kExtentZero) and unallocated (kExtentHole
  // | kExtentZero) runs; false as soon as emit returns false.
  bool SplitZeroes(uint64_t pos, uint64_t end,
                   absl::FunctionRef<bool(uint64_t, uint32_t)> emit);

  const int fd_;
  const uint64_t size_;
  const bool is_block_device_;
  const std::string path_;
  const FileIo io_;
  const uint64_t ring_id_;  // this file's id in the io threads' rings
  // FIEMAP failed with EOPNOTSUPP or ENOTTY once: not asked again.
  std::atomic<bool> fiemap_unsupported_{false};
  // Set if Open created the file: where, to undo it.
  std::unique_ptr<FileLocation> created_in_;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BACKEND_FILE_BACKEND_H_
