#ifndef NBDMGR_LIB_DAEMON_NOTIFY_H_
#define NBDMGR_LIB_DAEMON_NOTIFY_H_

#include <string_view>

namespace nbdmgr {

// systemd's readiness protocol (Type=notify): messages go to $NOTIFY_SOCKET
// when it is set and are dropped otherwise. Thread-safe.
void NotifyReady(std::string_view status);     // READY=1 + STATUS=
void NotifyStopping(std::string_view status);  // STOPPING=1 + STATUS=

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_DAEMON_NOTIFY_H_
