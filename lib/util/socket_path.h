#ifndef NBDMGR_LIB_UTIL_SOCKET_PATH_H_
#define NBDMGR_LIB_UTIL_SOCKET_PATH_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace nbdmgr {

// Makes the Unix socket path `path` free for bind(): nothing is there, or a
// stale socket that no process accepts on (left by a killed daemon), which
// is removed. FailedPrecondition, leaving the path alone, if it is not a
// socket or a connect() to it is accepted (another process serves there) or
// fails otherwise than with ECONNREFUSED (it cannot be shown stale).
// Messages start with `what` (e.g. "control socket /run/x.sock"); `flag`
// names the option to change in the not-a-socket case.
absl::Status ClaimSocketPath(const std::string& path, std::string_view what,
                             std::string_view flag);

// The identity of a socket file this process bound, so that it removes
// that file only and never one another process put at the same path.
class OwnedSocketFile {
 public:
  // Call right after bind(): records the file now at `path`. nullopt if
  // the path holds no socket.
  static std::optional<OwnedSocketFile> AfterBind(const std::string& path);
  // Removes the file if the path still names the socket that was bound.
  void RemoveIfStillOurs() const;
  const std::string& path() const { return path_; }

 private:
  OwnedSocketFile(std::string path, dev_t dev, ino_t ino)
      : path_(std::move(path)), dev_(dev), ino_(ino) {}
  std::string path_;
  dev_t dev_;
  ino_t ino_;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_UTIL_SOCKET_PATH_H_
