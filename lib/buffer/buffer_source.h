#ifndef NBDMGR_LIB_BUFFER_BUFFER_SOURCE_H_
#define NBDMGR_LIB_BUFFER_BUFFER_SOURCE_H_

#include <boost/asio/awaitable.hpp>
#include <cstddef>

#include "lib/buffer/buffer_lease.h"

namespace nbdmgr {

// Supplies request buffers to one connection. Not thread-safe: used from
// the connection's executor; leases may be released from any thread.
class RequestBufferSource {
 public:
  virtual ~RequestBufferSource() = default;
  // Whether a request of `size` bytes must use the streaming path (the
  // strategy streams, or no cap could ever grant that much).
  virtual bool ShouldStream(size_t size) {
    (void)size;
    return false;
  }
  // A lease of exactly `size` bytes (size > 0). May suspend until memory
  // is available (backpressure); never fails unless memory is exhausted,
  // then the lease is empty.
  virtual boost::asio::awaitable<BufferLease> Acquire(size_t size) = 0;
  // A small buffer (kStreamChunk bytes) for the streaming path; not charged
  // to any cap, so a connection can always make progress. Empty only when
  // memory is exhausted.
  virtual BufferLease AcquireChunk() = 0;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BUFFER_BUFFER_SOURCE_H_
