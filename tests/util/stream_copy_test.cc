#include "lib/util/stream_copy.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace nbdmgr {
namespace {

// Every combination of source and destination misalignment and of length
// around the 16- and 64-byte boundaries copies exactly, and touches nothing
// outside [dst, dst+n).
TEST(StreamCopyTest, CopiesExactlyAtEveryAlignmentAndLength) {
  std::vector<uint8_t> src(70000);
  for (size_t i = 0; i < src.size(); ++i) {
    src[i] = static_cast<uint8_t>(i * 131 + 7);
  }
  const size_t lengths[] = {0,  1,   15,  16,  17,   63,    64,   65,
                            79, 80,  127, 128, 4095, 32768, 65536, 65537};
  for (size_t dst_off = 0; dst_off < 16; ++dst_off) {
    for (size_t src_off : {size_t{0}, size_t{3}, size_t{16}}) {
      for (size_t n : lengths) {
        std::vector<uint8_t> dst(n + 64, 0xee);
        StreamCopy(dst.data() + dst_off, src.data() + src_off, n);
        for (size_t i = 0; i < dst_off; ++i) ASSERT_EQ(dst[i], 0xee);
        for (size_t i = 0; i < n; ++i) {
          ASSERT_EQ(dst[dst_off + i], src[src_off + i])
              << "n=" << n << " dst_off=" << dst_off << " i=" << i;
        }
        for (size_t i = dst_off + n; i < dst.size(); ++i) {
          ASSERT_EQ(dst[i], 0xee);
        }
      }
    }
  }
}

}  // namespace
}  // namespace nbdmgr
