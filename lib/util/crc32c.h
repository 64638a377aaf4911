#ifndef NBDMGR_LIB_UTIL_CRC32C_H_
#define NBDMGR_LIB_UTIL_CRC32C_H_

#include <cstdint>
#include <string_view>

namespace nbdmgr {

// CRC-32C (Castagnoli) of `data`, as iSCSI and ext4 use it: what the state
// log's records and persisted bitmaps are checked with.
uint32_t Crc32c(std::string_view data);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_UTIL_CRC32C_H_
