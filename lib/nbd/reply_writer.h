#ifndef NBDMGR_LIB_NBD_REPLY_WRITER_H_
#define NBDMGR_LIB_NBD_REPLY_WRITER_H_

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "lib/metrics/io_stats.h"
#include "lib/nbd/connection.h"
#include "lib/nbd/reply.h"

namespace nbdmgr::nbd {

// The only writer of a session's socket in transmission: every reply byte,
// streamed READs included, is written by Run(). Requests are counted in
// flight from BeginRequest() until their Ticket ends: when the reply has
// been written (or dropped because the connection failed), or when the
// ticket is destroyed unsent. Run() batches every queued reply into one
// gather write; a streamed reply is written alone, part by part. Not
// thread-safe: all calls on the session's executor; every ticket must end
// before the writer is destroyed.
class ReplyWriter {
 public:
  // `stats` (may be null: not counted) receives each written reply's
  // RequestRecord and the in-flight count.
  explicit ReplyWriter(Connection& conn, ConnectionIoStats* stats = nullptr);
  ~ReplyWriter();

  // A cleared Reply, recycled when possible.
  std::unique_ptr<Reply> NewReply();
  // Admits a request: counts it in flight until the ticket ends.
  [[nodiscard]] Ticket BeginRequest() {
    ++in_flight_;
    if (stats_ != nullptr) stats_->SetInFlight(in_flight_);
    return Ticket(this);
  }
  bool counting() const { return stats_ != nullptr; }
  // Queues the reply of the request `ticket` admitted; the ticket ends once
  // the reply is written or dropped. Replies go out in the order Send is
  // called, which need not be the order requests arrived in.
  void Send(std::unique_ptr<Reply> reply, Ticket ticket);

  // Suspends until fewer than `limit` requests are in flight.
  asio::awaitable<void> WaitInFlightBelow(size_t limit);
  // No more requests will begin; Run() returns once every one is answered.
  void Finish();
  // After Run() ended abnormally: drops every queued reply (ending their
  // tickets) and every later one, as if a write had failed.
  void Abandon();
  asio::awaitable<void> Run();

  size_t in_flight() const { return in_flight_; }
  // True once a write failed; later replies are dropped.
  bool failed() const { return failed_; }

 private:
  friend class Ticket;
  // A ticket ended.
  void EndRequest();
  void Recycle(std::unique_ptr<Reply> reply);
  static void Notify(asio::steady_timer& t) { t.cancel(); }
  static asio::awaitable<void> Wait(asio::steady_timer& t);

  static constexpr size_t kMaxBatchSegments = 512;
  static constexpr size_t kMaxFreeReplies = 64;

  // Records each written reply of batch_ in the connection's counters.
  void RecordBatch();
  // Moves queued replies (up to the first streamed one) into batch_ and
  // writes them in one gather write.
  asio::awaitable<ErrorCode> WriteBatch();
  // Moves the streamed reply at the queue's head into batch_ and writes its
  // parts as its stream produces them.
  asio::awaitable<ErrorCode> WriteStreamed();

  Connection& conn_;
  ConnectionIoStats* const stats_;
  std::deque<std::unique_ptr<Reply>> queue_;
  std::vector<std::unique_ptr<Reply>> free_;
  std::vector<std::unique_ptr<Reply>> batch_;
  std::vector<asio::const_buffer> iov_;
  size_t in_flight_ = 0;
  bool finishing_ = false;
  bool failed_ = false;
  // Used as condition variables: waiters sleep until cancel().
  asio::steady_timer writer_wake_;
  asio::steady_timer reader_wake_;
};

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_REPLY_WRITER_H_
