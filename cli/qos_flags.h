#ifndef NBDMGR_CLI_QOS_FLAGS_H_
#define NBDMGR_CLI_QOS_FLAGS_H_

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "cli/flags.h"
#include "lib/qos/qos_limits.h"
#include "nbdmgr/v1/export.pb.h"

namespace nbdmgr::cli {

// The QoS limit flags of create, update and qos-group create|update:
// --iops N, --iops-read N, --iops-write N, --bandwidth SIZE,
// --bandwidth-read SIZE, --bandwidth-write SIZE (per second; 0: no limit),
// each with a -burst twin. Unset: not given.
struct QosFlags {
  std::array<std::optional<std::string>, kQosLimitKinds> rate;
  std::array<std::optional<std::string>, kQosLimitKinds> burst;
};

// Adds the flags to `cmd`, bound to *f (which must outlive parsing).
void AddQosFlags(CLI::App* cmd, QosFlags* f);

// Sets what the given flags say in `limits`, and appends to `paths` the
// narrowest update_mask path of each below `field` ("qos", "limits"):
// "qos.iops_total.rate" for --iops, "qos.iops_total.burst" for
// --iops-burst. Returns a usage message naming the flag, or "".
std::string ApplyQosFlags(const QosFlags& f, const std::string& field,
                          v1::QosLimits* limits,
                          std::vector<std::string>* paths);

// The limits set in `l` for people, as spec keys
// ("iops=5000,bandwidth=200MiB"); "none" if there are none.
std::string QosLimitsText(const v1::QosLimits& l);

}  // namespace nbdmgr::cli

#endif  // NBDMGR_CLI_QOS_FLAGS_H_
