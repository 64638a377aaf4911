#include "lib/daemon/notify.h"

#include <systemd/sd-daemon.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "lib/util/strings.h"
#include "spdlog/spdlog.h"

namespace nbdmgr {
namespace {

void Notify(std::string_view state, std::string_view status) {
  std::string msg = absl::StrCat(ToAbsl(state), "\nSTATUS=", ToAbsl(status));
  int r = sd_notify(0, msg.c_str());
  if (r < 0) spdlog::warn("sd_notify failed: {}", std::strerror(-r));
}

}  // namespace

void NotifyReady(std::string_view status) { Notify("READY=1", status); }

void NotifyStopping(std::string_view status) { Notify("STOPPING=1", status); }

}  // namespace nbdmgr
