#ifndef NBDMGR_LIB_NBD_TRANSMISSION_H_
#define NBDMGR_LIB_NBD_TRANSMISSION_H_

#include <boost/asio/awaitable.hpp>
#include <boost/asio/thread_pool.hpp>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "lib/buffer/buffer_lease.h"
#include "lib/buffer/buffer_source.h"
#include "lib/nbd/connection.h"
#include "lib/nbd/negotiation.h"
#include "lib/nbd/qos_waiter.h"
#include "lib/nbd/reply_writer.h"
#include "lib/nbd/request_handler.h"
#include "lib/nbd/validation.h"
#include "lib/nbd/wire.h"

namespace nbdmgr::nbd {

struct TransmissionOptions {
  // Requests read ahead of their replies; the reader stops reading the
  // socket at this many.
  size_t max_in_flight = 64;
  // Where blocking backend calls run. Required when the backend blocks.
  asio::thread_pool* blocking_pool = nullptr;
  // The io thread's ring, for asynchronous backends (null: none; they use
  // the pool).
  IoRing* ring = nullptr;
};

// The reading side of one connection in transmission: reads each request,
// validates it (validation.h), gives it a buffer if the memory caps allow,
// reads a WRITE's payload, and hands it to the RequestHandler, inline for
// backends that never block and as its own coroutine for those that do (so
// replies may go out of order). Requests without a buffer stream: a WRITE
// through a chunk as its payload is read, a READ as a StreamedRead reply.
// Not thread-safe: lives on its session's executor. `conn`, `writer` and
// `buffers` must outlive it.
class Transmission {
 public:
  Transmission(Connection& conn, ReplyWriter& writer,
               RequestBufferSource& buffers, const NegotiationResult& agreed,
               TransmissionOptions options);

  // Returns when the client sent DISC or closed, the stream broke (bad
  // magic, short read), or the connection was shut down for reading; every
  // request read by then has been answered (or dropped if the socket
  // failed), and writer.Finish() has been called.
  asio::awaitable<void> ReadLoop();

  // The session is stopping (a drain, a delete, SIGTERM): no further
  // request is read (even one already in the socket's buffer), and a
  // request waiting on QoS limits goes on at once, so limits never hold a
  // stop up and a stop never lets requests past them. Call on the
  // session's executor.
  void StopReading();
  // The connection was closed (a stall, an abort): a request waiting on
  // QoS limits is dropped, not run. Call on the session's executor.
  void DropQosWaits();

  // Why ReadLoop ended, for logs: "disconnect", "closed", or an error.
  std::string_view end_reason() const { return end_reason_; }
  // Request headers read so far.
  uint64_t requests_read() const { return requests_read_; }

 private:
  // Reads and decodes the next request header into `h`; false (and
  // end_reason_ set) if the stream ended or broke.
  asio::awaitable<bool> ReadHeader(RequestHeader& h);
  // Takes one request from its header to its handler (or its error reply);
  // false if the stream broke while its payload was read.
  asio::awaitable<bool> Admit(const RequestHeader& h);
  // What the QoS limits let a request do.
  enum class QosVerdict {
    kRun,
    kDrop,        // the client hung up or the connection closed
    kNotFastZero  // a FAST_ZERO that would have to wait: ENOTSUP at once
  };
  // Waits until `h` passes the export's own QoS limits, then its group's;
  // counts the time waited in the export's and the group's metrics.
  asio::awaitable<QosVerdict> PassQos(const RequestHeader& h);
  // The buffer (or, for zero-copy READs, the pin charge) of a READ or WRITE
  // if the caps grant it now; empty if it must stream. Never waits for
  // memory. `count`: count a refusal as a streamed request.
  BufferLease AttemptLease(const RequestHeader& h, bool count);
  // AttemptLease (counted) after letting queued completions run.
  asio::awaitable<BufferLease> RetryLease(const RequestHeader& h);
  // Reads or skips payload bytes, marked as awaited by the client for the
  // stall watchdog; false if the stream broke.
  asio::awaitable<bool> ReadPayload(std::span<uint8_t> dst);
  asio::awaitable<bool> SkipPayload(uint64_t n);
  // A WRITE without a buffer: its payload moves to the backend a chunk at a
  // time as it is read, then it is answered; false if the stream broke.
  asio::awaitable<bool> StreamWrite(const RequestHeader& h, int64_t start,
                                    Ticket ticket);

  Connection& conn_;
  ReplyWriter& writer_;
  RequestBufferSource& buffers_;
  std::shared_ptr<Export> export_;
  RequestLimits limits_;
  TransmissionOptions options_;
  RequestHandler handler_;
  // Made at the first request that meets a limit.
  std::shared_ptr<QosWaiter> qos_waiter_;
  bool stopping_ = false;     // StopReading() was called
  bool qos_dropped_ = false;  // DropQosWaits() was called
  std::string_view end_reason_ = "closed";
  uint64_t requests_read_ = 0;
};

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_TRANSMISSION_H_
