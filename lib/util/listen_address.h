#ifndef NBDMGR_LIB_UTIL_LISTEN_ADDRESS_H_
#define NBDMGR_LIB_UTIL_LISTEN_ADDRESS_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace nbdmgr {

// A place to listen or connect: "tcp:HOST:PORT" (HOST may be an IPv6 literal
// in brackets, "tcp:[::1]:10809") or "unix:/absolute/path".
struct ListenAddress {
  enum class Kind { kTcp, kUnix };
  Kind kind = Kind::kTcp;
  std::string host;   // kTcp: numeric address or "localhost"
  uint16_t port = 0;  // kTcp: 0 means "any free port"
  std::string path;   // kUnix

  // Round-trips through ParseListenAddress.
  std::string ToString() const;
};

// Returns InvalidArgument with a message naming the input and the expected
// forms when `text` is not one of the forms above.
absl::StatusOr<ListenAddress> ParseListenAddress(std::string_view text);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_UTIL_LISTEN_ADDRESS_H_
