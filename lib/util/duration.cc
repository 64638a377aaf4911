#include "lib/util/duration.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "lib/util/strings.h"

namespace nbdmgr {

absl::StatusOr<std::chrono::milliseconds> ParseDuration(std::string_view text) {
  auto invalid = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid duration \"", ToAbsl(text),
                     "\" (expected e.g. 250ms, 30s, 5m, 1h)"));
  };
  size_t i = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
  if (i == 0 || i > 12) return invalid();
  uint64_t n = 0;
  if (!absl::SimpleAtoi(absl::string_view(text.data(), i), &n))
    return invalid();
  std::string_view unit = text.substr(i);
  uint64_t ms_per_unit;
  if (unit == "ms")
    ms_per_unit = 1;
  else if (unit == "s")
    ms_per_unit = 1000;
  else if (unit == "m")
    ms_per_unit = 60 * 1000;
  else if (unit == "h")
    ms_per_unit = 3600 * 1000;
  else if (unit.empty() && n == 0)
    ms_per_unit = 1;
  else
    return invalid();
  // Bounded so a deadline of now + it cannot overflow a nanosecond clock.
  if (n > static_cast<uint64_t>(kMaxDuration.count()) / ms_per_unit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "duration \"", ToAbsl(text), "\" is longer than 100 years"));
  }
  return std::chrono::milliseconds(n * ms_per_unit);
}

std::string FormatDuration(std::chrono::milliseconds d) {
  int64_t ms = d.count();
  if (ms % (3600 * 1000) == 0 && ms != 0)
    return absl::StrCat(ms / 3600000, "h");
  if (ms % 60000 == 0 && ms != 0) return absl::StrCat(ms / 60000, "m");
  if (ms % 1000 == 0) return absl::StrCat(ms / 1000, "s");
  return absl::StrCat(ms, "ms");
}

}  // namespace nbdmgr
