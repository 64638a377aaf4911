#ifndef NBDMGR_LIB_BUFFER_POOL_BUFFERS_H_
#define NBDMGR_LIB_BUFFER_POOL_BUFFERS_H_

#include "lib/buffer/buffer_pool.h"
#include "lib/buffer/buffer_source.h"

namespace nbdmgr {

// Leases buffers from a shared BufferPool. Thread-safe; `pool` must
// outlive it and its leases.
class PoolBuffers final : public RequestBufferSource, public BufferReleaser {
 public:
  explicit PoolBuffers(BufferPool& pool) : pool_(pool) {}
  boost::asio::awaitable<BufferLease> Acquire(size_t size) override {
    uint8_t* p = pool_.Get(size);
    co_return BufferLease(this, p, size, BufferPool::ClassSize(size), 0);
  }
  void Release(uint8_t* data, size_t capacity, size_t) override {
    pool_.Put(data, capacity);
  }

 private:
  BufferPool& pool_;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BUFFER_POOL_BUFFERS_H_
