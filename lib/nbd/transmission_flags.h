#ifndef NBDMGR_LIB_NBD_TRANSMISSION_FLAGS_H_
#define NBDMGR_LIB_NBD_TRANSMISSION_FLAGS_H_

#include <cstdint>

#include "lib/export/export.h"

namespace nbdmgr::nbd {

// The NBD transmission flags advertised for `e` (from its backend's caps and
// read-only setting) to a client that has (or has not) negotiated
// structured replies (NBD_FLAG_SEND_DF needs them).
uint16_t TransmissionFlags(const Export& e, bool structured_replies);

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_TRANSMISSION_FLAGS_H_
