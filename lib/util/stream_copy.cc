#include "lib/util/stream_copy.h"

#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace nbdmgr {

void StreamCopy(void* dst, const void* src, size_t n) {
#if defined(__SSE2__)
  auto* d = static_cast<uint8_t*>(dst);
  auto* s = static_cast<const uint8_t*>(src);
  size_t head = (16 - reinterpret_cast<uintptr_t>(d) % 16) % 16;
  if (n < head + 64) {
    std::memcpy(d, s, n);
    return;
  }
  std::memcpy(d, s, head);
  d += head;
  s += head;
  n -= head;
  auto* out = reinterpret_cast<__m128i*>(d);
  auto* in = reinterpret_cast<const __m128i*>(s);
  size_t blocks = n / 64;
  for (size_t i = 0; i < blocks; ++i, out += 4, in += 4) {
    __m128i a = _mm_loadu_si128(in);
    __m128i b = _mm_loadu_si128(in + 1);
    __m128i c = _mm_loadu_si128(in + 2);
    __m128i e = _mm_loadu_si128(in + 3);
    _mm_stream_si128(out, a);
    _mm_stream_si128(out + 1, b);
    _mm_stream_si128(out + 2, c);
    _mm_stream_si128(out + 3, e);
  }
  _mm_sfence();
  std::memcpy(out, in, n % 64);
#else
  std::memcpy(dst, src, n);
#endif
}

}  // namespace nbdmgr
