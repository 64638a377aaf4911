#ifndef NBDMGR_LIB_BUFFER_EXACT_BUFFERS_H_
#define NBDMGR_LIB_BUFFER_EXACT_BUFFERS_H_

#include <cstdlib>

#include "lib/buffer/buffer_source.h"

namespace nbdmgr {

// Allocates exactly the request length from the heap and frees it when the
// lease ends. Stateless; thread-safe.
class ExactBuffers final : public RequestBufferSource, public BufferReleaser {
 public:
  boost::asio::awaitable<BufferLease> Acquire(size_t size) override {
    auto* p = static_cast<uint8_t*>(std::malloc(size));
    co_return BufferLease(this, p, size, size, 0);
  }
  void Release(uint8_t* data, size_t, size_t) override { std::free(data); }
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BUFFER_EXACT_BUFFERS_H_
