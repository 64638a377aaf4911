#ifndef NBDMGR_LIB_QOS_QOS_LIMITS_H_
#define NBDMGR_LIB_QOS_QOS_LIMITS_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

#include "absl/status/status.h"

namespace nbdmgr {

// The six limits an export or a QoS group can have: operations and bytes
// per second, for reads, for writes and for both together.
//
// What counts: READ is a read of its length; WRITE and WRITE_ZEROES are
// writes of their length; CACHE is a read of its length (it makes the
// storage read); TRIM is one write operation of no bytes. FLUSH,
// BLOCK_STATUS and DISC are not limited. (As qemu's throttling counts.)
enum class QosLimitKind {
  kIopsTotal,
  kIopsRead,
  kIopsWrite,
  kBpsTotal,
  kBpsRead,
  kBpsWrite,
};
inline constexpr int kQosLimitKinds = 6;
inline constexpr std::array<QosLimitKind, kQosLimitKinds> kAllQosLimitKinds = {
    QosLimitKind::kIopsTotal, QosLimitKind::kIopsRead, QosLimitKind::kIopsWrite,
    QosLimitKind::kBpsTotal,  QosLimitKind::kBpsRead,  QosLimitKind::kBpsWrite};

// "iops", "iops-read", "iops-write", "bandwidth", "bandwidth-read",
// "bandwidth-write": the --export keys and nbdctl flags (a burst is the
// same name with "-burst" appended).
std::string_view SpecKeyOf(QosLimitKind kind);
// "iops_total", "iops_read", "iops_write", "bps_total", "bps_read",
// "bps_write": the API's field names.
std::string_view FieldNameOf(QosLimitKind kind);
inline bool IsBytes(QosLimitKind kind) {
  return kind >= QosLimitKind::kBpsTotal;
}

// One limit: `rate` units (operations or bytes) per second, and how many
// units may go at once after a quiet spell (`burst`; 0: a tenth of a
// second's worth, at least one). rate == 0: no limit (then burst
// must be 0).
struct RateLimit {
  uint64_t rate = 0;
  uint64_t burst = 0;
  bool operator==(const RateLimit&) const = default;
  // The burst in force: `burst`, or the default above.
  uint64_t EffectiveBurst() const;
};

// The largest rate and burst: 2^40 operations or bytes (1 TiB) per second.
inline constexpr uint64_t kMaxQosRate = uint64_t{1} << 40;

struct QosLimits {
  std::array<RateLimit, kQosLimitKinds> limit{};

  RateLimit& operator[](QosLimitKind k) { return limit[static_cast<int>(k)]; }
  const RateLimit& operator[](QosLimitKind k) const {
    return limit[static_cast<int>(k)];
  }
  // Whether any limit is set.
  bool any() const;
  bool operator==(const QosLimits&) const = default;
};

// Rates and bursts within kMaxQosRate, no burst without a rate.
// InvalidArgument naming the limit ("iops-read burst ...").
absl::Status ValidateQosLimits(const QosLimits& limits);

// A change to some of the limits: each set rate or burst replaces the old
// one. Setting a rate to 0 removes that limit (and its burst).
struct QosLimitsUpdate {
  std::array<std::optional<uint64_t>, kQosLimitKinds> rate;
  std::array<std::optional<uint64_t>, kQosLimitKinds> burst;

  void set_rate(QosLimitKind k, uint64_t v) { rate[static_cast<int>(k)] = v; }
  void set_burst(QosLimitKind k, uint64_t v) { burst[static_cast<int>(k)] = v; }
  // Replaces the whole of `k` (rate and burst).
  void set(QosLimitKind k, RateLimit l) {
    set_rate(k, l.rate);
    set_burst(k, l.burst);
  }
  bool empty() const;
  // `limits` with this update applied (not validated).
  QosLimits AppliedTo(QosLimits limits) const;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_QOS_QOS_LIMITS_H_
