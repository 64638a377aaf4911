#ifndef NBDMGR_LIB_UTIL_STREAM_COPY_H_
#define NBDMGR_LIB_UTIL_STREAM_COPY_H_

#include <cstddef>

namespace nbdmgr {

// memcpy for large copies into memory that is not about to be read again
// (a memory export's pages): on x86-64, the 16-byte-aligned middle of `dst`
// is written with non-temporal stores, which skip reading the destination
// lines into the cache first and do not evict the hot data around them.
// The stores are fenced before returning, so a lock released afterwards
// publishes them like any other write. Plain memcpy elsewhere.
void StreamCopy(void* dst, const void* src, size_t n);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_UTIL_STREAM_COPY_H_
