#include "cli/qos_flags.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "lib/convert/proto_convert.h"
#include "lib/export/export_config.h"
#include "lib/util/strings.h"

namespace nbdmgr::cli {
namespace {

// "--iops", "--bandwidth-read-burst".
std::string FlagOf(QosLimitKind kind, bool burst) {
  return absl::StrCat("--", ToAbsl(SpecKeyOf(kind)), burst ? "-burst" : "");
}

std::string RateHelp(QosLimitKind kind) {
  const char* what = IsBytes(kind) ? "bytes" : "operations";
  switch (kind) {
    case QosLimitKind::kIopsTotal:
    case QosLimitKind::kBpsTotal:
      return absl::StrCat(what, " per second, reads and writes\n",
                          IsBytes(kind) ? "(e.g. 200MiB; " : "(",
                          "0 = no limit); requests beyond\n"
                          "a limit wait, none fail");
    case QosLimitKind::kIopsRead:
    case QosLimitKind::kBpsRead:
      return absl::StrCat(what, " per second of reads");
    case QosLimitKind::kIopsWrite:
    case QosLimitKind::kBpsWrite:
      return absl::StrCat(what, " per second of writes");
  }
  return "";
}

}  // namespace

void AddQosFlags(CLI::App* cmd, QosFlags* f) {
  for (QosLimitKind kind : kAllQosLimitKinds) {
    const int i = static_cast<int>(kind);
    const std::string type = IsBytes(kind) ? "SIZE" : "N";
    AddOptional(cmd, FlagOf(kind, false), type, &f->rate[i], RateHelp(kind));
    AddOptional(cmd, FlagOf(kind, true), type, &f->burst[i],
                kind == QosLimitKind::kIopsTotal
                    ? "how much of --iops may go at once after a\n"
                      "quiet spell (default: a tenth of a second's\n"
                      "worth); likewise for each limit"
                    : absl::StrCat("burst of ", FlagOf(kind, false)));
  }
}

std::string ApplyQosFlags(const QosFlags& f, const std::string& field,
                          v1::QosLimits* limits,
                          std::vector<std::string>* paths) {
  for (QosLimitKind kind : kAllQosLimitKinds) {
    const int i = static_cast<int>(kind);
    for (const bool burst : {false, true}) {
      const std::optional<std::string>& value = burst ? f.burst[i] : f.rate[i];
      if (!value) continue;
      const std::string flag = FlagOf(kind, burst);
      uint64_t n = 0;
      if (IsBytes(kind)) {
        absl::StatusOr<uint64_t> size = SizeFlag(flag, *value);
        if (!size.ok()) {
          return absl::StrCat(size.status().message(), " (bytes per second)");
        }
        n = *size;
      } else if (!absl::SimpleAtoi(*value, &n)) {
        return absl::StrCat(flag,
                            ": expected a count of operations per second, "
                            "got \"",
                            *value, "\"");
      }
      if (n > kMaxQosRate) {
        return absl::StrCat(flag, ": ", *value, " is out of range (at most ",
                            kMaxQosRate, " per second)");
      }
      v1::RateLimit* r = MutableRateLimitOf(limits, kind);
      burst ? r->set_burst(n) : r->set_rate(n);
      paths->push_back(absl::StrCat(field, ".", ToAbsl(FieldNameOf(kind)),
                                    burst ? ".burst" : ".rate"));
    }
  }
  return "";
}

std::string QosLimitsText(const v1::QosLimits& l) {
  const std::string text = FormatQosSpec(QosLimitsFromProto(l));
  return text.empty() ? "none" : text;
}

}  // namespace nbdmgr::cli
