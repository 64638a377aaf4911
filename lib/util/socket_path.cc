#include "lib/util/socket_path.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/util/errors.h"
#include "lib/util/strings.h"

namespace nbdmgr {

namespace {

// The path part of Claim() (the lock is held).
absl::Status FreeSocketPath(const std::string& path, std::string_view what,
                            std::string_view flag) {
  const absl::string_view w = ToAbsl(what);
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoStatus(errno, what);
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(w,
                     ": the path exists and is not a socket; not touching "
                     "it (remove it or choose another ",
                     ToAbsl(flag), ")"));
  }
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  if (path.size() >= sizeof(sun.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(w, ": path too long"));
  }
  std::memcpy(sun.sun_path, path.data(), path.size());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, "socket");
  int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&sun), sizeof(sun));
  int error = rc == 0 ? 0 : errno;
  ::close(fd);
  if (error == ECONNREFUSED) {
    // Nobody listens: left by a daemon that was killed.
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoStatus(errno, absl::StrCat(w, ": remove stale socket"));
    }
    return absl::OkStatus();
  }
  if (error == ENOENT) return absl::OkStatus();  // gone meanwhile
  if (error == 0 || error == EAGAIN || error == EINPROGRESS) {
    return absl::FailedPreconditionError(absl::StrCat(
        w,
        ": another process is serving on this socket (is nbdmgrd already "
        "running?); leaving it in place"));
  }
  return absl::FailedPreconditionError(
      absl::StrCat(w, ": the socket exists and cannot be probed (",
                   std::strerror(error), "); leaving it in place"));
}

}  // namespace

absl::StatusOr<SocketPathClaim> SocketPathClaim::Claim(const std::string& path,
                                                       std::string_view what,
                                                       std::string_view flag) {
  const std::string lock_path = absl::StrCat(path, ".lock");
  int fd = ::open(lock_path.c_str(),
                  O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0600);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", lock_path));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat(
          ToAbsl(what),
          ": another process is serving on this socket (it holds ", lock_path,
          "; is nbdmgrd already running?); leaving it in place"));
    }
    return ErrnoStatus(err, absl::StrCat("lock ", lock_path));
  }
  if (absl::Status st = FreeSocketPath(path, what, flag); !st.ok()) {
    ::close(fd);
    return st;
  }
  return SocketPathClaim(path, fd);
}

SocketPathClaim::SocketPathClaim(SocketPathClaim&& o) noexcept
    : path_(std::move(o.path_)),
      lock_fd_(std::exchange(o.lock_fd_, -1)),
      bound_(o.bound_),
      dev_(o.dev_),
      ino_(o.ino_) {}

SocketPathClaim::~SocketPathClaim() {
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void SocketPathClaim::Bound() {
  struct stat st;
  if (::lstat(path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
    bound_ = true;
    dev_ = st.st_dev;
    ino_ = st.st_ino;
  }
}

void SocketPathClaim::RemoveIfStillOurs() const {
  struct stat st;
  if (bound_ && ::lstat(path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) &&
      st.st_dev == dev_ && st.st_ino == ino_) {
    ::unlink(path_.c_str());
  }
}

}  // namespace nbdmgr
