#ifndef NBDMGR_LIB_BUFFER_BUFFER_SOURCE_H_
#define NBDMGR_LIB_BUFFER_BUFFER_SOURCE_H_

#include <cstddef>

#include "lib/buffer/buffer_lease.h"

namespace nbdmgr {

// Supplies request buffers to one connection. Nothing here ever waits:
// when the caps (or this connection's share of them, or its memory limit)
// cannot grant memory now, the caller streams the request through a chunk
// instead. Not thread-safe: used from the connection's executor, and its
// leases are released there too (a fixed or grow buffer goes back to the
// connection's own idle list), before the source is destroyed.
class RequestBufferSource {
 public:
  virtual ~RequestBufferSource() = default;
  // A lease whose size() is exactly `size` (size > 0), or an empty lease
  // when the strategy streams, the caps, this connection's share or its
  // memory limit are full, or the OS refuses memory: the caller then
  // streams. What is charged to the caps is the lease's capacity(), which
  // may be more than `size`: the pool's power-of-two class, `size` rounded
  // up to pages (grow) or the max payload (fixed); fixed and grow buffers
  // stay charged while the connection keeps them idle for reuse. With
  // `count` false a refusal is not counted as a streamed request (the
  // caller will try again).
  virtual BufferLease TryAcquire(size_t size, bool count = true) = 0;
  // Charges `n` bytes that the backend lends (pages pinned until a reply
  // is written) to the caps without allocating anything; empty when they
  // do not fit (the caller copies through a chunk instead).
  virtual BufferLease TryChargePinned(size_t n) = 0;
  // A chunk for the streaming path: kStreamChunk bytes charged to the caps
  // when they allow it, else the connection's reserve (kReserveChunk
  // bytes, not charged to any cap, so a connection can always make
  // progress). Empty only when the OS refuses memory.
  virtual BufferLease AcquireChunk() = 0;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BUFFER_BUFFER_SOURCE_H_
