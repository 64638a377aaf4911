#ifndef NBDMGR_LIB_UTIL_STRINGS_H_
#define NBDMGR_LIB_UTIL_STRINGS_H_

// Debian's absl is built without std aliases: absl::string_view is its own
// type. These convert between the two without copying.

#include <cstdint>
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

// Whether `s` is well-formed UTF-8 (no overlong forms, surrogates or code
// points above U+10FFFF): what protobuf string fields must hold.
inline bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 1, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;  // truncated sequence
    for (size_t k = 1; k <= n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += n + 1;
  }
  return true;
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
