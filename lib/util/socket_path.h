#ifndef NBDMGR_LIB_UTIL_SOCKET_PATH_H_
#define NBDMGR_LIB_UTIL_SOCKET_PATH_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace nbdmgr {

// The right to bind a Unix socket at a path, and then to remove it.
//
// Claim() takes an exclusive lock on `<path>.lock` (flock, held until the
// claim is destroyed; the lock file is left in place), so two daemons
// starting at once on one path cannot both judge it free. Then it makes the
// path free for bind(): nothing is there, or a stale socket no process
// accepts on (left by a killed daemon), which is removed. FailedPrecondition,
// leaving the path alone, if the lock is held, the path is not a socket, or
// a connect() to it is accepted (another process serves there) or fails
// otherwise than with ECONNREFUSED (it cannot be shown stale). Messages
// start with `what` (e.g. "control socket /run/x.sock"); `flag` names the
// option to change.
//
// Bound() records the socket file right after bind(); RemoveIfStillOurs()
// removes it only if the path still names that file, never one another
// process put there.
class SocketPathClaim {
 public:
  static absl::StatusOr<SocketPathClaim> Claim(const std::string& path,
                                               std::string_view what,
                                               std::string_view flag);
  SocketPathClaim(SocketPathClaim&& o) noexcept;
  SocketPathClaim& operator=(SocketPathClaim&&) = delete;
  ~SocketPathClaim();

  void Bound();
  void RemoveIfStillOurs() const;
  const std::string& path() const { return path_; }

 private:
  SocketPathClaim(std::string path, int lock_fd)
      : path_(std::move(path)), lock_fd_(lock_fd) {}
  std::string path_;
  int lock_fd_;
  bool bound_ = false;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_UTIL_SOCKET_PATH_H_
