#ifndef NBDMGR_LIB_NBD_REQUEST_HANDLER_H_
#define NBDMGR_LIB_NBD_REQUEST_HANDLER_H_

#include <boost/asio/awaitable.hpp>
#include <boost/asio/thread_pool.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "lib/buffer/buffer_lease.h"
#include "lib/export/export.h"
#include "lib/nbd/backend_call.h"
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

// Runs validated requests against the export's backend and hands their
// replies to the ReplyWriter: one handler per command, each of which calls
// the backend and builds its reply with the encoders of reply.h / codec.h.
// Every request it is given is answered exactly once, with its ticket: a
// backend error becomes an NBD error reply; an unexpected failure (an
// exception) becomes EIO. Both are counted as backend errors
// (SetBackendError), unlike the client's errors (SetError). Not thread-safe:
// lives on its session's executor; `conn`, `writer` and `exp` must outlive it.
class RequestHandler {
 public:
  // Serves the export and the features `agreed` in negotiation.
  RequestHandler(Connection& conn, ReplyWriter& writer,
                 const NegotiationResult& agreed,
                 asio::thread_pool* blocking_pool, IoRing* ring);

  // Runs request `h` and sends its reply with `ticket`. `lease` is the
  // request's buffer (a WRITE's payload, already read; room for a READ's
  // data) or, for a zero-copy READ, the charge of the pins its reply keeps.
  // `start` (steady ns) is when its header was read.
  asio::awaitable<void> Execute(RequestHeader h, BufferLease lease,
                                int64_t start, Ticket ticket);

  // Replies without running anything: `error` (an NBD error) with
  // `message`, or success.
  void SendError(const RequestHeader& h, uint32_t error,
                 std::string_view message, int64_t start, Ticket ticket);
  void SendOk(const RequestHeader& h, int64_t start, Ticket ticket);

  // A reply for `h`, counted (if counting is on) as a success so far.
  std::unique_ptr<Reply> NewReply(const RequestHeader& h, int64_t start);
  // Empties `reply` and makes it `h`'s error reply: an error chunk for a
  // READ under structured replies (required there), else a simple reply.
  // Counted as the client's error (not a backend error).
  void SetError(Reply& reply, const RequestHeader& h, uint32_t error,
                std::string_view message) const;
  // SetError for `status` (not OK), a backend call's failure: the NBD error
  // NbdErrorFromStatus gives, counted as a backend error too. Every place
  // that turns a backend call's status into an error reply goes through
  // here or SendBackendError.
  void SetBackendError(Reply& reply, const RequestHeader& h,
                       const absl::Status& status) const;
  // Replies to `h` with SetBackendError's reply.
  void SendBackendError(const RequestHeader& h, const absl::Status& status,
                        int64_t start, Ticket ticket);

  // How a READ is split into data and hole pieces (backend extents when
  // structured replies allow holes; one data piece otherwise). Calls the
  // backend directly: run it through call().
  ReadPieces PlanRead(const RequestHeader& h) const;
  // Whether PlanRead asks the backend for extents (structured replies, no
  // DF flag, a backend with extents, a READ of sparse_read_min or more).
  bool SparsePlan(const RequestHeader& h) const;
  // Whether READs lend the backend's bytes instead of copying them (only
  // for backends that never block: pinning runs on the network thread).
  bool ZeroCopyReads() const {
    return export_->caps().zero_copy_read && !export_->caps().blocking;
  }
  const BackendCall& call() const { return call_; }
  // Marks a range a write, trim or zero touched in the export's active
  // dirty bitmaps; every path that changes data calls it before replying.
  void MarkDirty(uint64_t offset, uint64_t length) const {
    export_->bitmaps().Mark(offset, length);
  }
  const std::string& peer() const { return conn_.peer(); }
  bool structured_replies() const { return structured_; }

 private:
  // The handlers: each runs one command and, on success, fills `reply`
  // (left as a simple success reply if it adds nothing).
  asio::awaitable<absl::Status> Read(const RequestHeader& h, BufferLease& lease,
                                     Reply& reply);
  asio::awaitable<absl::Status> Write(const RequestHeader& h,
                                      BufferLease& lease);
  asio::awaitable<absl::Status> Flush();
  asio::awaitable<absl::Status> Trim(const RequestHeader& h);
  asio::awaitable<absl::Status> WriteZeroes(const RequestHeader& h);
  asio::awaitable<absl::Status> Cache(const RequestHeader& h);
  asio::awaitable<absl::Status> BlockStatus(const RequestHeader& h,
                                            Reply& reply);
  // Runs the handler for h.type (not a zero-copy READ).
  asio::awaitable<absl::Status> Dispatch(const RequestHeader& h,
                                         BufferLease& lease, Reply& reply);
  asio::awaitable<absl::Status> Unknown();
  // A zero-copy READ, synchronous (only for backends that never block):
  // the reply's data segments are the backend's own bytes under pins,
  // released when the reply is recycled; `lease` (the pins' charge) moves
  // into the reply on success.
  absl::Status ReadZeroCopy(const RequestHeader& h, BufferLease& lease,
                            Reply& reply);
  // Logs a request that failed with an exception; returns its status.
  absl::Status Unexpected(const RequestHeader& h, std::string_view what) const;
  void LogFailure(const RequestHeader& h, std::string_view what) const;

  Connection& conn_;
  ReplyWriter& writer_;
  std::shared_ptr<Export> export_;
  const bool structured_;
  // What BLOCK_STATUS reports, in order.
  const std::vector<NegotiationResult::MetaContext> meta_contexts_;
  BackendCall call_;
};

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_REQUEST_HANDLER_H_
