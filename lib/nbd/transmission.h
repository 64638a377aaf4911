#ifndef NBDMGR_LIB_NBD_TRANSMISSION_H_
#define NBDMGR_LIB_NBD_TRANSMISSION_H_

#include <boost/asio/awaitable.hpp>
#include <boost/asio/thread_pool.hpp>
#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "lib/buffer/buffer_lease.h"
#include "lib/buffer/buffer_source.h"
#include "lib/nbd/connection.h"
#include "lib/nbd/negotiation.h"
#include "lib/nbd/reply_writer.h"
#include "lib/nbd/wire.h"

namespace nbdmgr::nbd {

// One piece of a READ reply: data, or (structured replies) a zero range
// sent as OFFSET_HOLE.
struct ReadPiece {
  uint64_t offset;
  uint32_t length;
  bool zero;
};
using ReadPieces = absl::InlinedVector<ReadPiece, 4>;

// What a request is checked against.
struct RequestLimits {
  uint64_t export_size = 0;
  uint16_t tx_flags = 0;  // as advertised to this client
  bool structured_replies = false;
  bool base_allocation = false;
  uint32_t max_payload = 32 * 1024 * 1024;
  uint32_t min_block = 1;  // READ/WRITE offset and length must be multiples
};

// The verdict on one request: error is kOk or the NBD error to reply with;
// message says why (for logs and structured error chunks).
struct RequestCheck {
  uint32_t error = kOk;
  std::string_view message;
};

// Checks a request against the spec and the export before anything is
// allocated or read for it: known command, flags valid for that command and
// advertised, writes on a read-only export (EPERM), zero length (EINVAL),
// payload above the maximum (EINVAL), range past the end (ENOSPC for writes,
// EINVAL otherwise), READ/WRITE not aligned to the minimum block size
// (EINVAL), BLOCK_STATUS without a negotiated context (EINVAL).
// DISC is not checked here.
RequestCheck ValidateRequest(const RequestHeader& h, const RequestLimits& l);

// Maps a backend error to the NBD error sent to the client.
uint32_t NbdErrorFromStatus(const absl::Status& status);

// The counters' view of a command and of an NBD error code.
IoOp IoOpOfCommand(uint16_t type);
IoResult IoResultOfError(uint32_t nbd_error);

struct TransmissionOptions {
  // Requests read ahead of their replies; the reader stops reading the
  // socket at this many.
  size_t max_in_flight = 64;
  // Where blocking backend calls run. Required when the backend blocks.
  asio::thread_pool* blocking_pool = nullptr;
};

// The request loop of one connection: reads requests, validates them, runs
// them against the export's backend and hands replies to the ReplyWriter.
// Backends that do not block run inline on the session thread; blocking ones
// run on the pool and may complete out of order. Not thread-safe: lives on
// its session's executor. `conn`, `writer` and `buffers` must outlive it.
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

  // Why ReadLoop ended, for logs: "disconnect", "closed", or an error.
  std::string_view end_reason() const { return end_reason_; }
  // Request headers read so far.
  uint64_t requests_read() const { return requests_read_; }

 private:
  // Runs `fn` (backend work returning absl::Status) inline for in-memory
  // backends and on the blocking pool for ones that block.
  template <typename Fn>
  asio::awaitable<absl::Status> RunBackend(Fn fn);
  // Streaming path (no request-sized buffer): a WRITE's payload moves to the
  // backend in chunks as it is read; returns false if the stream broke.
  asio::awaitable<bool> StreamWrite(const RequestHeader& h, int64_t start,
                                    Ticket ticket);
  // Produces a streamed READ reply chunk by chunk (runs in the writer).
  // Sets `record`'s result if the READ fails.
  asio::awaitable<ErrorCode> StreamRead(RequestHeader h, RequestRecord& record);
  // How a READ is split into data and hole pieces (backend extents when
  // structured replies allow holes; one data piece otherwise).
  ReadPieces PlanRead(const RequestHeader& h);
  // Fills `reply` with a READ's reply whose data segments borrow the
  // backend's own bytes (caps().zero_copy_read): no buffer, no copy until
  // the socket write. The pins are released when the reply is recycled.
  absl::Status AddPinnedRead(const RequestHeader& h, Reply& reply);
  // The buffer (or, for zero-copy READs, the pin charge) of a READ or WRITE
  // if the caps grant it now; empty if it must stream. Never waits for
  // memory. `count`: count a refusal as a streamed request.
  BufferLease AttemptLease(const RequestHeader& h, bool count);
  // AttemptLease (counted) after letting queued completions run.
  asio::awaitable<BufferLease> RetryLease(const RequestHeader& h);
  // Logs a request that failed with an exception.
  void LogUnexpected(const RequestHeader& h, std::string_view what) const;
  // What a zero-copy READ of `h` is charged: the pin units it keeps alive.
  uint64_t PinnedFootprint(const RequestHeader& h) const;
  // Whether READs take that path (it runs on the network thread, so only
  // for backends that never block).
  bool ZeroCopyReads() const {
    BackendCaps c = export_->caps();
    return c.zero_copy_read && !c.blocking;
  }
  // Runs one validated request and sends its reply with `ticket`.
  // `start` (steady ns) is when the request's header was read. `lease` is
  // the request's buffer, or the charge of a zero-copy READ's pins. A
  // request that fails unexpectedly (an exception from a backend or an
  // allocation) is still answered: EIO, counted like any other error.
  asio::awaitable<void> Execute(RequestHeader h, BufferLease lease,
                                int64_t start, Ticket ticket);
  asio::awaitable<void> ReplyError(const RequestHeader& h, uint32_t error,
                                   std::string_view message, int64_t start,
                                   Ticket ticket);
  // Marks `reply` as answering `h` with `nbd_error` (kOk or an NBD error),
  // for the connection's counters, if counting is on.
  void Track(Reply& reply, const RequestHeader& h, uint32_t nbd_error,
             int64_t start) const;

  Connection& conn_;
  ReplyWriter& writer_;
  RequestBufferSource& buffers_;
  std::shared_ptr<Export> export_;
  RequestLimits limits_;
  TransmissionOptions options_;
  std::string_view end_reason_ = "closed";
  uint64_t requests_read_ = 0;
};

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_TRANSMISSION_H_
