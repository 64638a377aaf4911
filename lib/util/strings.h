#ifndef NBDMGR_LIB_UTIL_STRINGS_H_
#define NBDMGR_LIB_UTIL_STRINGS_H_

// Debian's absl is built without std aliases: absl::string_view is its own
// type. These convert between the two without copying.

#include <string_view>

#include "absl/strings/string_view.h"
#include "fmt/format.h"

namespace nbdmgr {

inline std::string_view ToStd(absl::string_view s) {
  return {s.data(), s.size()};
}
inline absl::string_view ToAbsl(std::string_view s) {
  return {s.data(), s.size()};
}

}  // namespace nbdmgr

// Lets spdlog/fmt print absl::string_view (e.g. Status::message()).
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<std::string_view> {
  template <typename Ctx>
  auto format(absl::string_view s, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(
        std::string_view(s.data(), s.size()), ctx);
  }
};

#endif  // NBDMGR_LIB_UTIL_STRINGS_H_
