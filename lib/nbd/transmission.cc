#include "lib/nbd/transmission.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "lib/nbd/codec.h"
#include "lib/nbd/errors.h"
#include "lib/nbd/streamed_read.h"
#include "lib/nbd/transmission_flags.h"
#include "lib/util/strings.h"
#include "spdlog/spdlog.h"

namespace nbdmgr::nbd {
namespace {

// Bytes a zero-copy READ of `h` keeps allocated while its reply is queued:
// every pin unit it touches, in full.
uint64_t PinnedFootprint(const RequestHeader& h, uint64_t unit) {
  if (unit <= 1) return h.length;
  const uint64_t first = h.offset / unit;
  const uint64_t last = (h.offset + h.length - 1) / unit;
  return (last - first + 1) * unit;
}

// Marks the connection as waiting for a request's payload (for the stall
// watchdog) for its scope.
class AwaitingPayload {
 public:
  explicit AwaitingPayload(Connection& c) : c_(c) {
    c_.set_awaiting_payload(true);
  }
  ~AwaitingPayload() { c_.set_awaiting_payload(false); }
  AwaitingPayload(const AwaitingPayload&) = delete;
  AwaitingPayload& operator=(const AwaitingPayload&) = delete;

 private:
  Connection& c_;
};

// Whether requests of this type count against QoS limits, and what they
// cost (see QosLimitKind).
bool QosLimited(uint16_t type) {
  return type == kCmdRead || type == kCmdWrite || type == kCmdWriteZeroes ||
         type == kCmdTrim || type == kCmdCache;
}
QosCost QosCostOf(const RequestHeader& h) {
  switch (h.type) {
    case kCmdRead:
    case kCmdCache:
      return {false, h.length};
    case kCmdWrite:
    case kCmdWriteZeroes:
      return {true, h.length};
    default:  // TRIM: one operation, no bytes
      return {true, 0};
  }
}

RequestLimits LimitsOf(const Export& e, const NegotiationResult& agreed) {
  RequestLimits l;
  l.export_size = e.size();
  l.tx_flags = TransmissionFlags(e, agreed.structured_replies);
  l.structured_replies = agreed.structured_replies;
  l.meta_context = !agreed.meta_contexts.empty();
  l.max_payload = e.block_sizes().maximum_payload;
  l.min_block = e.block_sizes().minimum;
  return l;
}

}  // namespace

Transmission::Transmission(Connection& conn, ReplyWriter& writer,
                           RequestBufferSource& buffers,
                           const NegotiationResult& agreed,
                           TransmissionOptions options)
    : conn_(conn),
      writer_(writer),
      buffers_(buffers),
      export_(agreed.export_),
      limits_(LimitsOf(*export_, agreed)),
      options_(options),
      handler_(conn, writer, agreed, options.blocking_pool, options.ring) {}

asio::awaitable<void> Transmission::ReadLoop() {
  for (;;) {
    co_await writer_.WaitInFlightBelow(options_.max_in_flight);
    if (stopping_) {
      end_reason_ = "stopped";
      break;
    }
    if (writer_.failed()) {
      end_reason_ = "reply write failed";
      break;
    }
    RequestHeader h;
    if (!co_await ReadHeader(h)) break;
    if (h.type == kCmdDisc) {
      end_reason_ = "disconnect";
      break;
    }
    if (!co_await Admit(h)) {
      end_reason_ = "closed during payload";
      break;
    }
  }
  // Answer everything already read before the session ends.
  co_await writer_.WaitInFlightBelow(1);
  writer_.Finish();
}

asio::awaitable<bool> Transmission::ReadHeader(RequestHeader& h) {
  uint8_t raw[kRequestHeaderSize];
  if (ErrorCode ec = co_await conn_.ReadExact(raw); ec) {
    end_reason_ = ec == asio::error::eof ? "closed" : "read error";
    co_return false;
  }
  absl::StatusOr<RequestHeader> decoded = DecodeRequestHeader(raw);
  if (!decoded.ok()) {
    spdlog::warn("{}: {}; closing connection", conn_.peer(),
                 decoded.status().message());
    end_reason_ = "bad request magic";
    co_return false;
  }
  h = *decoded;
  ++requests_read_;
  co_return true;
}

asio::awaitable<bool> Transmission::Admit(const RequestHeader& h) {
  const int64_t start = writer_.counting() ? SteadyNowNs() : 0;
  Ticket ticket = writer_.BeginRequest();
  if (RequestCheck check = ValidateRequest(h, limits_); check.error != kOk) {
    // Keep the stream in sync: consume a rejected WRITE's payload.
    if (h.type == kCmdWrite && !co_await SkipPayload(h.length)) co_return false;
    handler_.SendError(h, check.error, check.message, start, std::move(ticket));
    co_return true;
  }
  // Limits delay a request here, before it holds memory and before its
  // payload is read: the reader stops reading, so the client's further
  // requests wait in its socket, and each connection has at most one
  // request waiting (round-robin across connections).
  if (export_->qos().engaged() && QosLimited(h.type)) {
    switch (co_await PassQos(h)) {
      case QosVerdict::kRun:
        break;
      case QosVerdict::kNotFastZero:
        handler_.SendError(h, kEnotsup, "fast zero would wait for QoS limits",
                           start, std::move(ticket));
        co_return true;
      case QosVerdict::kDrop:
        // Nobody reads the reply; a WRITE's payload stays unread, so the
        // stream ends here.
        handler_.SendError(h, kEshutdown, "client gone", start,
                           std::move(ticket));
        end_reason_ = "client gone while its request waited for QoS limits";
        co_return false;
    }
  }
  // Memory is only ever tried for, never waited for: when the caps (or
  // this connection's share) are full, the request streams through a
  // chunk, so no request can wait on memory held by one that waits on its
  // client.
  BufferLease lease;
  if (h.type == kCmdWrite || h.type == kCmdRead) {
    // This request's own ticket is in flight; are others?
    const bool others = writer_.in_flight() > 1;
    lease = AttemptLease(h, /*count=*/!others);
    // A client that sends its next request as soon as a reply arrived can
    // be read before the writer's completion that returns that reply's
    // memory has run: let queued completions run, try again.
    if (!lease.holds() && others) lease = co_await RetryLease(h);
  }
  if (h.type == kCmdWrite) {
    if (!lease) co_return co_await StreamWrite(h, start, std::move(ticket));
    if (!co_await ReadPayload(lease.span())) co_return false;
  } else if (h.type == kCmdRead && !lease.holds()) {
    std::unique_ptr<Reply> reply = handler_.NewReply(h, start);
    reply->set_stream(std::make_unique<StreamedRead>(handler_, buffers_, h));
    writer_.Send(std::move(reply), std::move(ticket));
    co_return true;
  }
  // Backends that answer at once run here; others (blocking, or
  // asynchronous) run beside the reader, which goes on reading requests.
  if (const BackendCaps caps = export_->caps(); !caps.blocking && !caps.async) {
    co_await handler_.Execute(h, std::move(lease), start, std::move(ticket));
    co_return true;
  }
  asio::co_spawn(
      conn_.socket().get_executor(),
      handler_.Execute(h, std::move(lease), start, std::move(ticket)),
      [peer = conn_.peer()](std::exception_ptr e) {
        if (e) spdlog::error("{}: request failed with an exception", peer);
      });
  co_return true;
}

void Transmission::StopReading() {
  stopping_ = true;
  if (qos_waiter_ != nullptr) qos_waiter_->Cancel(/*drop=*/false);
}

void Transmission::DropQosWaits() {
  qos_dropped_ = true;
  if (qos_waiter_ != nullptr) qos_waiter_->Cancel(/*drop=*/true);
}

asio::awaitable<Transmission::QosVerdict> Transmission::PassQos(
    const RequestHeader& h) {
  if (qos_dropped_) co_return QosVerdict::kDrop;
  if (stopping_) co_return QosVerdict::kRun;
  if (qos_waiter_ == nullptr) {
    qos_waiter_ = std::make_shared<QosWaiter>(conn_.socket().get_executor(),
                                              conn_.socket().native_handle());
  }
  QosGate& gate = export_->qos();
  const QosCost cost = QosCostOf(h);
  // Held across the wait: a group deleted meanwhile lives until it ends.
  std::shared_ptr<QosGroup> group = gate.group();
  if (h.type == kCmdWriteZeroes && (h.flags & kCmdFlagFastZero)) {
    // A fast zero must fail at once rather than be slow (NBD spec): it
    // goes only if every limit lets it through now.
    const int64_t now = SteadyNowNs();
    const bool fits =
        (!gate.own().limited() || gate.own().TryEnter(cost, now)) &&
        (group == nullptr || group->throttle().TryEnter(cost, now));
    co_return fits ? QosVerdict::kRun : QosVerdict::kNotFastZero;
  }
  int64_t waited = 0;
  QosOutcome outcome = QosOutcome::kAdmitted;
  if (gate.own().limited()) {
    const QosPassResult r = co_await qos_waiter_->Pass(gate.own(), cost);
    outcome = r.outcome;
    if (r.waited_ns > 0) {
      gate.own().RecordWait(r.waited_ns);
      waited += r.waited_ns;
    }
  }
  if (group != nullptr && outcome == QosOutcome::kAdmitted) {
    // One flow per export: the group takes its members in turn, however
    // many connections each has. Stops waiting if the export leaves the
    // group meanwhile.
    const QosPassResult r = co_await qos_waiter_->Pass(
        group->throttle(), cost,
        [&gate, g = group.get()] { return gate.group().get() == g; }, &gate);
    outcome = r.outcome;
    if (r.waited_ns > 0) {
      group->throttle().RecordWait(r.waited_ns);
      waited += r.waited_ns;
    }
  }
  if (waited > 0) gate.RecordWait(waited);
  co_return outcome == QosOutcome::kDropped ? QosVerdict::kDrop
                                            : QosVerdict::kRun;
}

BufferLease Transmission::AttemptLease(const RequestHeader& h, bool count) {
  return h.type == kCmdRead && handler_.ZeroCopyReads()
             ? buffers_.TryChargePinned(
                   PinnedFootprint(h, export_->caps().pin_unit))
             : buffers_.TryAcquire(h.length, count);
}

asio::awaitable<BufferLease> Transmission::RetryLease(const RequestHeader& h) {
  co_await asio::post(conn_.socket().get_executor(), asio::use_awaitable);
  co_return AttemptLease(h, /*count=*/true);
}

asio::awaitable<bool> Transmission::ReadPayload(std::span<uint8_t> dst) {
  AwaitingPayload awaiting(conn_);
  co_return !co_await conn_.ReadExact(dst);
}

asio::awaitable<bool> Transmission::SkipPayload(uint64_t n) {
  AwaitingPayload awaiting(conn_);
  co_return !co_await conn_.Skip(n);
}

asio::awaitable<bool> Transmission::StreamWrite(const RequestHeader& h,
                                                int64_t start, Ticket ticket) {
  BufferLease chunk = buffers_.AcquireChunk();
  const bool chunk_ok = static_cast<bool>(chunk);
  absl::Status st =
      chunk_ok ? absl::OkStatus()
               : absl::ResourceExhaustedError("out of memory for buffers");
  uint64_t pos = h.offset;
  uint64_t remaining = h.length;
  while (remaining > 0 && st.ok()) {
    const std::span<uint8_t> piece =
        chunk.span().first(std::min<uint64_t>(remaining, chunk.size()));
    // Only the read is the client's: a slow backend write is not a stall.
    if (!co_await ReadPayload(piece)) co_return false;
    st = co_await handler_.call().Write(pos, piece, false);
    handler_.MarkDirty(pos, piece.size());
    pos += piece.size();
    remaining -= piece.size();
  }
  // After a failure, keep the stream in sync: drain the rest.
  if (remaining > 0 && !co_await SkipPayload(remaining)) co_return false;
  if (st.ok() && (h.flags & kCmdFlagFua)) {
    st = co_await handler_.call().Flush();
  }
  chunk.Reset();
  if (st.ok()) {
    handler_.SendOk(h, start, std::move(ticket));
  } else if (!chunk_ok) {
    // No backend call was made: not a backend error.
    handler_.SendError(h, NbdErrorFromStatus(st), ToStd(st.message()), start,
                       std::move(ticket));
  } else {
    handler_.SendBackendError(h, st, start, std::move(ticket));
  }
  co_return true;
}

}  // namespace nbdmgr::nbd
