#ifndef NBDMGR_LIB_BUFFER_BUFFER_SOURCE_H_
#define NBDMGR_LIB_BUFFER_BUFFER_SOURCE_H_

#include <cstddef>

#include <boost/asio/awaitable.hpp>

#include "lib/buffer/buffer_lease.h"

namespace nbdmgr {

// Supplies request buffers to one connection. Not thread-safe: used from
// the connection's executor; leases may be released from any thread.
class RequestBufferSource {
 public:
  virtual ~RequestBufferSource() = default;
  // A lease of exactly `size` bytes (size > 0). May suspend until memory
  // is available (backpressure); never fails.
  virtual boost::asio::awaitable<BufferLease> Acquire(size_t size) = 0;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BUFFER_BUFFER_SOURCE_H_
