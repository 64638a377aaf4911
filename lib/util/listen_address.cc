#include "lib/util/listen_address.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "lib/util/strings.h"

namespace nbdmgr {

std::string ListenAddress::ToString() const {
  if (kind == Kind::kUnix) return absl::StrCat("unix:", path);
  if (host.find(':') != std::string::npos) {
    return absl::StrCat("tcp:[", host, "]:", port);
  }
  return absl::StrCat("tcp:", host, ":", port);
}

absl::StatusOr<ListenAddress> ParseListenAddress(std::string_view text) {
  auto invalid = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid address \"", ToAbsl(text), "\": ", ToAbsl(why),
                     " (expected tcp:HOST:PORT or unix:/PATH)"));
  };
  ListenAddress addr;
  if (text.starts_with("unix:")) {
    addr.kind = ListenAddress::Kind::kUnix;
    addr.path = std::string(text.substr(5));
    if (addr.path.empty() || addr.path.front() != '/') {
      return invalid("unix socket path must be absolute");
    }
    // sockaddr_un.sun_path is 108 bytes including the terminating NUL.
    if (addr.path.size() > 107) return invalid("unix socket path too long");
    return addr;
  }
  if (!text.starts_with("tcp:")) return invalid("unknown scheme");
  std::string_view rest = text.substr(4);
  std::string_view host, port;
  if (rest.starts_with("[")) {
    size_t close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() ||
        rest[close + 1] != ':') {
      return invalid("bad bracketed IPv6 host");
    }
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) return invalid("missing port");
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return invalid("IPv6 hosts must be in brackets");
    }
  }
  if (host.empty()) return invalid("missing host");
  uint32_t port_number = 0;
  if (!absl::SimpleAtoi(ToAbsl(port), &port_number) || port_number > 65535) {
    return invalid("port must be a number from 0 to 65535");
  }
  addr.host = std::string(host);
  addr.port = static_cast<uint16_t>(port_number);
  return addr;
}

}  // namespace nbdmgr
