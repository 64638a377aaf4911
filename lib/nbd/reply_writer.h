#ifndef NBDMGR_LIB_NBD_REPLY_WRITER_H_
#define NBDMGR_LIB_NBD_REPLY_WRITER_H_

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/buffer/buffer_lease.h"
#include "lib/metrics/io_stats.h"
#include "lib/nbd/connection.h"

namespace nbdmgr::nbd {

// What the writer records about a request once its reply is written.
struct RequestRecord {
  bool active = false;  // false: not counted (counting off)
  IoOp op = IoOp::kOther;
  IoResult result = IoResult::kOk;
  uint32_t bytes = 0;    // payload length of a READ or WRITE
  int64_t start_ns = 0;  // steady clock, when the request header was read
};

// Nanoseconds on the steady clock, for request latencies.
inline int64_t SteadyNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

class ReplyWriter;

// A request's place in flight: taken when the request is admitted
// (ReplyWriter::BeginRequest) and ended when its reply has been written or
// dropped. Whoever holds a ticket owes the client a reply: Send() hands the
// ticket over with the reply; a ticket destroyed without being sent (an
// unexpected failure) still ends the request, so the count can never stay
// raised. Move-only; used on the session's executor.
class Ticket {
 public:
  Ticket() = default;
  Ticket(Ticket&& o) noexcept : w_(std::exchange(o.w_, nullptr)) {}
  Ticket& operator=(Ticket&& o) noexcept {
    if (this != &o) {
      Reset();
      w_ = std::exchange(o.w_, nullptr);
    }
    return *this;
  }
  Ticket(const Ticket&) = delete;
  Ticket& operator=(const Ticket&) = delete;
  ~Ticket() { Reset(); }

  explicit operator bool() const { return w_ != nullptr; }
  // Ends the request now.
  void Reset();

 private:
  friend class ReplyWriter;
  explicit Ticket(ReplyWriter* w) : w_(w) {}
  ReplyWriter* w_ = nullptr;
};

// One reply on its way to the socket: a list of byte segments, each either
// copied into the reply (headers), borrowed from the reply's buffer lease
// or lent by the backend under a pin (data). Not thread-safe.
class Reply {
 public:
  Reply() = default;
  Reply(const Reply&) = delete;
  Reply& operator=(const Reply&) = delete;
  ~Reply() { ReleasePins(); }

  // Appends `n` bytes owned by the reply and returns where to write them;
  // the pointer is valid until the next Add call.
  uint8_t* AddBytes(size_t n);
  // Appends borrowed bytes; they must stay valid until the reply is written
  // (point them into lease()).
  void AddData(std::span<const uint8_t> data);
  // Appends bytes lent by a backend; the reply releases `pin` (if not null)
  // when it is reset or destroyed, after it was written.
  void AddPinned(std::span<const uint8_t> data, Pin* pin);

  // Simple reply header.
  void AddSimpleReply(uint32_t error, uint64_t cookie);
  // Structured chunk header; `payload_length` counts what follows it.
  void AddChunkHeader(uint16_t flags, uint16_t type, uint64_t cookie,
                      uint32_t payload_length);

  // A streamed reply: instead of segments, the writer calls `producer` when
  // this reply's turn comes; it writes the whole reply to the connection
  // itself (nothing else is written meanwhile) and returns the write error,
  // if any.
  using Producer = std::function<asio::awaitable<ErrorCode>()>;
  void set_producer(Producer p) { producer_ = std::move(p); }
  bool streamed() const { return producer_ != nullptr; }
  Producer& producer() { return producer_; }

  // The request this reply answers, for the connection's counters.
  RequestRecord& record() { return record_; }

  BufferLease& lease() { return lease_; }
  void set_lease(BufferLease lease) { lease_ = std::move(lease); }
  void set_ticket(Ticket t) { ticket_ = std::move(t); }

  // Appends this reply's segments to `out`.
  void Gather(std::vector<asio::const_buffer>* out) const;
  size_t segment_count() const { return segments_.size(); }
  // Clears segments and releases the lease and pins, keeping allocated
  // capacity.
  void Reset();

 private:
  void ReleasePins();

  Ticket ticket_;  // declared first: ends last, after the memory below
  struct Segment {
    const uint8_t* data;  // nullptr: bytes_[offset, offset+length)
    size_t offset;
    size_t length;
  };
  std::vector<uint8_t> bytes_;
  std::vector<Segment> segments_;
  BufferLease lease_;
  std::vector<Pin*> pins_;
  Producer producer_;
  RequestRecord record_;
};

// The only writer of a session's socket in transmission. Requests are
// counted in flight from BeginRequest() until their Ticket ends: when the
// reply has been written (or dropped because the connection failed), or
// when the ticket is destroyed unsent. Run() batches every queued reply into
// one gather write. Not thread-safe: all calls on the session's executor;
// every ticket must end before the writer is destroyed.
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

  // Counts the written replies of batch_ and updates in-flight.
  void RecordBatch();

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
