#ifndef NBDMGR_LIB_CONVERT_PROTO_CONVERT_H_
#define NBDMGR_LIB_CONVERT_PROTO_CONVERT_H_

// The one place protobuf messages meet domain types.

#include <chrono>
#include <string>

#include "absl/status/statusor.h"
#include "lib/buffer/buffer_policy.h"
#include "lib/export/export_info.h"
#include "lib/export/export_config.h"
#include "nbdmgr/v1/export.pb.h"
#include "nbdmgr/v1/qos.pb.h"

namespace nbdmgr {

// "exports/{id}" <-> id. InvalidArgument for anything else.
absl::StatusOr<std::string> ExportIdFromName(const std::string& resource_name);
std::string ExportResourceName(const std::string& id);

// google.protobuf.Duration <-> milliseconds (sub-millisecond parts are
// dropped). InvalidArgument naming `field` for a negative duration, nanos
// out of 0..999999999, or longer than kMaxDuration (about 100 years);
// finer range checks stay with ValidateExportConfig and the flag parser.
google::protobuf::Duration DurationToProto(std::chrono::milliseconds d);
absl::StatusOr<std::chrono::milliseconds> DurationFromProto(
    const google::protobuf::Duration& d, std::string_view field);

// Enum values: *_UNSPECIFIED is the default (BufferStrategy::kPool,
// TlsMode::kOff); InvalidArgument naming the field for a number that is no
// value. The deprecated alias names of 0.1.0 are the same numbers.
absl::StatusOr<BufferStrategy> StrategyFromProto(v1::BufferStrategy s);
v1::BufferStrategy StrategyToProto(BufferStrategy s);
absl::StatusOr<TlsMode> TlsModeFromProto(v1::TlsMode m);
v1::TlsMode TlsModeToProto(TlsMode m);

// The configuration fields of `p` (output-only ones are ignored) as an
// ExportConfig named `id`. InvalidArgument naming the field at fault.
absl::StatusOr<ExportConfig> ExportConfigFromProto(const v1::Export& p,
                                                   const std::string& id);
// Configuration fields only (for the state file).
v1::Export ExportConfigToProto(const ExportConfig& c);
// Configuration plus live state (for the API).
v1::Export ExportInfoToProto(const ExportInfo& info);

// QoS limits; unset messages are no limit. Range checks stay with
// ValidateQosLimits.
QosLimits QosLimitsFromProto(const v1::QosLimits& p);
v1::QosLimits QosLimitsToProto(const QosLimits& l);
// The limit of `kind` in `p`.
const v1::RateLimit& RateLimitOf(const v1::QosLimits& p, QosLimitKind kind);
v1::RateLimit* MutableRateLimitOf(v1::QosLimits* p, QosLimitKind kind);

// "qosGroups/{id}" -> id; a bare id is taken as it is (Export.qos_group
// may be either). InvalidArgument for another collection.
absl::StatusOr<std::string> QosGroupIdFromName(const std::string& name);
std::string QosGroupResourceName(const std::string& id);
// The configuration of a group named `id` (validated).
absl::StatusOr<QosGroupConfig> QosGroupConfigFromProto(const v1::QosGroup& p,
                                                       const std::string& id);
// Name and limits only (for the state file).
v1::QosGroup QosGroupConfigToProto(const QosGroupConfig& g);
// Everything (for the API).
v1::QosGroup QosGroupInfoToProto(const QosGroupInfo& info);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_CONVERT_PROTO_CONVERT_H_
