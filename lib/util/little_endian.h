#ifndef NBDMGR_LIB_UTIL_LITTLE_ENDIAN_H_
#define NBDMGR_LIB_UTIL_LITTLE_ENDIAN_H_

// Little-endian integers of `bytes` bytes (1 to 8), as nbdmgr's own file
// formats store them (state log, dirty bitmaps, overlays). NBD's wire is
// big-endian: see lib/nbd/codec.h.

#include <cstdint>
#include <string>

namespace nbdmgr {

inline void PutLe(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) {
    out.push_back(static_cast<char>(v >> (8 * i)));
  }
}

inline void PutLe(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

inline uint64_t GetLe(const void* p, int bytes) {
  const auto* b = static_cast<const unsigned char*>(p);
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{b[i]} << (8 * i);
  return v;
}

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_UTIL_LITTLE_ENDIAN_H_
