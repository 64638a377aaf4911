#include "lib/util/size.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "lib/util/strings.h"

namespace nbdmgr {
namespace {

struct Suffix {
  std::string_view name;
  uint64_t multiplier;
};

constexpr uint64_t kKi = 1024;
constexpr Suffix kSuffixes[] = {
    {"", 1},
    {"B", 1},
    {"K", kKi},
    {"KiB", kKi},
    {"M", kKi* kKi},
    {"MiB", kKi* kKi},
    {"G", kKi* kKi* kKi},
    {"GiB", kKi* kKi* kKi},
    {"T", kKi* kKi* kKi* kKi},
    {"TiB", kKi* kKi* kKi* kKi},
    {"P", kKi* kKi* kKi* kKi* kKi},
    {"PiB", kKi* kKi* kKi* kKi* kKi},
    {"kB", 1000},
    {"KB", 1000},
    {"MB", 1000ull * 1000},
    {"GB", 1000ull * 1000 * 1000},
    {"TB", 1000ull * 1000 * 1000 * 1000},
};

}  // namespace

absl::StatusOr<uint64_t> ParseSize(std::string_view text) {
  auto invalid = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid size \"", ToAbsl(text), "\": ", ToAbsl(why)));
  };
  size_t i = 0;
  while (
      i < text.size() &&
      (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) {
    ++i;
  }
  std::string_view number = text.substr(0, i);
  std::string_view suffix = text.substr(i);
  while (!suffix.empty() && suffix.front() == ' ') suffix.remove_prefix(1);
  if (number.empty()) return invalid("expected a number such as 64MiB");
  if (number.find('.') != number.rfind('.')) return invalid("bad number");

  const Suffix* found = nullptr;
  for (const Suffix& s : kSuffixes) {
    if (s.name == suffix) {
      found = &s;
      break;
    }
  }
  if (found == nullptr) {
    return invalid(
        "unknown unit (use B, KiB, MiB, GiB, TiB, PiB, kB, MB, GB, TB)");
  }

  if (number.find('.') == std::string_view::npos) {
    uint64_t value = 0;
    for (char c : number) {
      uint64_t digit = static_cast<uint64_t>(c - '0');
      if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) {
        return invalid("too large");
      }
      value = value * 10 + digit;
    }
    if (value != 0 &&
        value > std::numeric_limits<uint64_t>::max() / found->multiplier) {
      return invalid("too large");
    }
    return value * found->multiplier;
  }

  // Fractional values ("1.5GiB"): computed in long double, must come out whole.
  std::string copy(number);
  long double value = std::strtold(copy.c_str(), nullptr);
  long double bytes = value * static_cast<long double>(found->multiplier);
  if (bytes >= 18446744073709551615.0L) return invalid("too large");
  long double whole = std::floor(bytes);
  if (whole != bytes) return invalid("not a whole number of bytes");
  return static_cast<uint64_t>(whole);
}

std::string FormatSize(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B",   "KiB", "MiB", "GiB",
                                           "TiB", "PiB", "EiB"};
  int unit = 0;
  uint64_t whole = bytes;
  while (whole >= 1024 && whole % 1024 == 0 && unit < 6) {
    whole /= 1024;
    ++unit;
  }
  if (whole < 1024 * 10 || unit == 6) {
    return absl::StrCat(whole, kUnits[unit]);
  }
  // Not an exact multiple: show one decimal in the largest fitting unit.
  double value = static_cast<double>(bytes);
  unit = 0;
  while (value >= 1024.0 && unit < 6) {
    value /= 1024.0;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f%s", value, kUnits[unit]);
  return buf;
}

}  // namespace nbdmgr
