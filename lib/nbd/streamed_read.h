#ifndef NBDMGR_LIB_NBD_STREAMED_READ_H_
#define NBDMGR_LIB_NBD_STREAMED_READ_H_

#include <cstdint>

#include "lib/buffer/buffer_lease.h"
#include "lib/buffer/buffer_source.h"
#include "lib/nbd/reply.h"
#include "lib/nbd/request_handler.h"
#include "lib/nbd/wire.h"

namespace nbdmgr::nbd {

// A READ the memory caps had no buffer for, streamed through one chunk
// (RequestBufferSource::AcquireChunk, taken when the reply's turn comes):
// each part is one backend read of up to a chunk, sent as an OFFSET_DATA
// chunk (structured replies) or as the next piece of a simple reply's
// data. A failure before any data went out becomes the READ's error reply;
// after that a structured reply ends with an error chunk, and a simple
// reply, which cannot report it, aborts the connection. Not thread-safe;
// `handler` and `buffers` must outlive it.
class StreamedRead final : public ReplyStream {
 public:
  StreamedRead(const RequestHandler& handler, RequestBufferSource& buffers,
               const RequestHeader& h)
      : handler_(handler), buffers_(buffers), h_(h), pos_(h.offset) {}

  asio::awaitable<Part> Next(Reply& reply) override;

 private:
  const RequestHandler& handler_;
  RequestBufferSource& buffers_;
  const RequestHeader h_;
  BufferLease chunk_;
  uint64_t pos_;          // the next byte to read
  bool started_ = false;  // data went out
};

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_STREAMED_READ_H_
