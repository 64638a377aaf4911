#include "lib/qos/qos_limits.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "lib/util/strings.h"

namespace nbdmgr {

std::string_view SpecKeyOf(QosLimitKind kind) {
  switch (kind) {
    case QosLimitKind::kIopsTotal:
      return "iops";
    case QosLimitKind::kIopsRead:
      return "iops-read";
    case QosLimitKind::kIopsWrite:
      return "iops-write";
    case QosLimitKind::kBpsTotal:
      return "bandwidth";
    case QosLimitKind::kBpsRead:
      return "bandwidth-read";
    case QosLimitKind::kBpsWrite:
      return "bandwidth-write";
  }
  return "?";
}

std::string_view FieldNameOf(QosLimitKind kind) {
  switch (kind) {
    case QosLimitKind::kIopsTotal:
      return "iops_total";
    case QosLimitKind::kIopsRead:
      return "iops_read";
    case QosLimitKind::kIopsWrite:
      return "iops_write";
    case QosLimitKind::kBpsTotal:
      return "bps_total";
    case QosLimitKind::kBpsRead:
      return "bps_read";
    case QosLimitKind::kBpsWrite:
      return "bps_write";
  }
  return "?";
}

uint64_t RateLimit::EffectiveBurst() const {
  if (burst != 0) return burst;
  return std::max<uint64_t>(rate / 10, 1);  // a tenth of a second's worth
}

bool QosLimits::any() const {
  return std::any_of(limit.begin(), limit.end(),
                     [](const RateLimit& l) { return l.rate != 0; });
}

absl::Status ValidateQosLimits(const QosLimits& limits) {
  for (QosLimitKind k : kAllQosLimitKinds) {
    const RateLimit& l = limits[k];
    const absl::string_view key = ToAbsl(SpecKeyOf(k));
    if (l.rate > kMaxQosRate) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, " ", l.rate, " is out of range (at most ",
                       kMaxQosRate, " per second)"));
    }
    if (l.burst > kMaxQosRate) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, " burst ", l.burst, " is out of range (at most ",
                       kMaxQosRate, ")"));
    }
    if (l.rate == 0 && l.burst != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, " burst needs a rate (", key, " is not set)"));
    }
  }
  return absl::OkStatus();
}

bool QosLimitsUpdate::empty() const {
  for (int i = 0; i < kQosLimitKinds; ++i) {
    if (rate[i] || burst[i]) return false;
  }
  return true;
}

QosLimits QosLimitsUpdate::AppliedTo(QosLimits limits) const {
  for (int i = 0; i < kQosLimitKinds; ++i) {
    RateLimit& l = limits.limit[i];
    if (rate[i]) l.rate = *rate[i];
    if (burst[i]) l.burst = *burst[i];
    // No limit: no burst either (unless this update sets one, which the
    // validation then refuses).
    if (rate[i] && *rate[i] == 0 && !burst[i]) l.burst = 0;
  }
  return limits;
}

}  // namespace nbdmgr
