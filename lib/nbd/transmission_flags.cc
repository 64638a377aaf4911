#include "lib/nbd/transmission_flags.h"

#include "lib/nbd/wire.h"

namespace nbdmgr::nbd {

uint16_t TransmissionFlags(const Export& e, bool structured_replies) {
  const BackendCaps& caps = e.caps();
  uint16_t f = kTxHasFlags | kTxSendFlush;
  if (e.served_read_only()) {
    f |= kTxReadOnly;
  } else {
    f |= kTxSendFua | kTxSendWriteZeroes;
    if (caps.can_trim) f |= kTxSendTrim;
    if (caps.can_fast_zero) f |= kTxSendFastZero;
  }
  if (caps.can_multi_conn) f |= kTxCanMultiConn;
  if (caps.can_cache) f |= kTxSendCache;
  if (structured_replies) f |= kTxSendDf;
  return f;
}

}  // namespace nbdmgr::nbd
