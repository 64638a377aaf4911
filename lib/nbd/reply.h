#ifndef NBDMGR_LIB_NBD_REPLY_H_
#define NBDMGR_LIB_NBD_REPLY_H_

#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/buffer/buffer_lease.h"
#include "lib/metrics/io_stats.h"
#include "lib/nbd/codec.h"
#include "lib/util/clock.h"

namespace nbdmgr::nbd {

namespace asio = boost::asio;

// What the writer records about a request once its reply is written.
struct RequestRecord {
  bool active = false;  // false: not counted (counting off)
  IoOp op = IoOp::kOther;
  IoResult result = IoResult::kOk;
  // The error (`result`) came from a backend call, not from validation:
  // counted in IoCounts::backend_errors too.
  bool backend_error = false;
  uint32_t bytes = 0;    // payload length of a READ or WRITE
  int64_t start_ns = 0;  // steady clock, when the request header was read
};

using ::nbdmgr::SteadyNowNs;  // lib/util/clock.h

class ReplyWriter;

// A request's place in flight: taken when the request is admitted
// (ReplyWriter::BeginRequest, the only place) and ended when its reply has
// been written or dropped. Whoever holds a ticket owes the client a reply:
// ReplyWriter::Send() hands the ticket over with the reply; a ticket
// destroyed without being sent (an unexpected failure) still ends the
// request, so the in-flight count can never stay raised. Move-only; used on
// the session's executor.
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

class Reply;

// A reply produced part by part while the writer writes it (a READ too
// large for the memory caps, sent through one chunk-sized buffer). The
// writer asks for a part only when the previous one is on the socket, so at
// most one part is held at a time; it is the only code that writes them.
class ReplyStream {
 public:
  enum class Part {
    kMore,   // a part was appended; ask again once it is written
    kLast,   // the reply's last part was appended
    kAbort,  // the reply cannot be completed: close the connection
  };
  virtual ~ReplyStream() = default;
  // Appends the next part's segments to `reply` (which holds no segments:
  // the writer clears the previous part's). Segments may point into the
  // stream's own memory until the next call or the stream's destruction.
  virtual asio::awaitable<Part> Next(Reply& reply) = 0;
};

// One reply on its way to the socket: a list of byte segments, each either
// copied into the reply (headers, encoded by codec.h), borrowed from the
// reply's buffer lease or lent by the backend under a pin (data). Not
// thread-safe.
class Reply {
 public:
  Reply() = default;
  Reply(const Reply&) = delete;
  Reply& operator=(const Reply&) = delete;
  ~Reply() { ReleasePins(); }

  // Headers and whole chunks (see codec.h for each).
  void AddSimpleReply(uint32_t error, uint64_t cookie);
  // An OFFSET_DATA chunk's header: `length` data bytes must follow (AddData
  // or AddPinned).
  void AddDataChunkHeader(uint16_t flags, uint64_t cookie, uint64_t offset,
                          uint32_t length);
  void AddHoleChunk(uint16_t flags, uint64_t cookie, uint64_t offset,
                    uint32_t length);
  void AddErrorChunk(uint64_t cookie, uint32_t error, std::string_view message);
  void AddBlockStatusChunk(uint16_t flags, uint64_t cookie, uint32_t context_id,
                           std::span<const BlockDescriptor> descriptors);

  // Appends borrowed bytes; they must stay valid until the reply is written
  // (point them into lease()).
  void AddData(std::span<const uint8_t> data);
  // Appends bytes lent by a backend; the reply releases `pin` (if not null)
  // when it is reset or destroyed, after it was written.
  void AddPinned(std::span<const uint8_t> data, Pin* pin);

  // A reply made of parts: the writer asks `stream` for them in turn
  // instead of writing this reply's segments.
  void set_stream(std::unique_ptr<ReplyStream> stream) {
    stream_ = std::move(stream);
  }
  ReplyStream* stream() const { return stream_.get(); }

  // The request this reply answers, for the connection's counters.
  RequestRecord& record() { return record_; }

  BufferLease& lease() { return lease_; }
  void set_lease(BufferLease lease) { lease_ = std::move(lease); }
  void set_ticket(Ticket t) { ticket_ = std::move(t); }

  // Appends this reply's segments to `out`.
  void Gather(std::vector<asio::const_buffer>* out) const;
  size_t segment_count() const { return segments_.size(); }
  // Drops the segments (and pins), keeping the lease, record, stream and
  // ticket: a reply that failed half-built starts again, and a streamed
  // reply's parts follow one another.
  void ClearSegments();
  // Clears everything and ends the ticket, keeping allocated capacity.
  void Reset();

 private:
  // Appends `n` bytes owned by the reply and returns where to write them;
  // the pointer is valid until the next Add call.
  uint8_t* AddBytes(size_t n);
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
  std::unique_ptr<ReplyStream> stream_;
  RequestRecord record_;
};

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_REPLY_H_
