#include "lib/nbd/transmission.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "lib/buffer/buffer_policy.h"
#include "lib/nbd/codec.h"
#include "lib/nbd/offload.h"
#include "lib/util/strings.h"
#include "spdlog/spdlog.h"

namespace nbdmgr::nbd {
namespace {

// A structured READ is split into at most this many data/hole chunks; a
// more fragmented range is sent as one data chunk.
constexpr size_t kMaxReadChunks = 16;
// BLOCK_STATUS replies carry at most this many descriptors.
constexpr size_t kMaxDescriptors = 1024;

// Bytes a zero-copy READ of `h` keeps allocated while its reply is queued:
// every pin unit it touches, in full.
uint64_t PinnedFootprintOf(const RequestHeader& h, uint64_t unit) {
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

}  // namespace

RequestCheck ValidateRequest(const RequestHeader& h, const RequestLimits& l) {
  switch (h.type) {
    case kCmdRead:
    case kCmdWrite:
    case kCmdFlush:
    case kCmdTrim:
    case kCmdCache:
    case kCmdWriteZeroes:
    case kCmdBlockStatus:
      break;
    default:
      return {kEinval, "unknown command"};
  }
  uint16_t allowed = 0;
  if (l.tx_flags & kTxSendFua) allowed |= kCmdFlagFua;
  switch (h.type) {
    case kCmdRead:
      if (l.structured_replies) allowed |= kCmdFlagDf;
      break;
    case kCmdWriteZeroes:
      allowed |= kCmdFlagNoHole;
      if (l.tx_flags & kTxSendFastZero) allowed |= kCmdFlagFastZero;
      break;
    case kCmdBlockStatus:
      allowed |= kCmdFlagReqOne;
      break;
  }
  if (h.flags & ~allowed) return {kEinval, "flag not valid for this command"};
  const bool writes =
      h.type == kCmdWrite || h.type == kCmdTrim || h.type == kCmdWriteZeroes;
  if (writes && (l.tx_flags & kTxReadOnly)) {
    return {kEperm, "export is read-only"};
  }
  if (h.type == kCmdFlush) return {};
  if (h.length == 0) return {kEinval, "zero-length request"};
  if ((h.type == kCmdRead || h.type == kCmdWrite) && h.length > l.max_payload) {
    return {kEinval, "request longer than the maximum payload"};
  }
  if (h.offset > l.export_size || h.length > l.export_size - h.offset) {
    return {
        h.type == kCmdWrite || h.type == kCmdWriteZeroes ? kEnospc : kEinval,
        "request past the end of the export"};
  }
  if ((h.type == kCmdRead || h.type == kCmdWrite) && l.min_block > 1 &&
      (h.offset % l.min_block != 0 || h.length % l.min_block != 0)) {
    return {kEinval, "not aligned to the minimum block size"};
  }
  if (h.type == kCmdBlockStatus && !l.base_allocation) {
    return {kEinval, "no metadata context negotiated"};
  }
  return {};
}

IoOp IoOpOfCommand(uint16_t type) {
  switch (type) {
    case kCmdRead:
      return IoOp::kRead;
    case kCmdWrite:
      return IoOp::kWrite;
    case kCmdFlush:
      return IoOp::kFlush;
    case kCmdTrim:
      return IoOp::kTrim;
    case kCmdWriteZeroes:
      return IoOp::kWriteZeroes;
    case kCmdCache:
      return IoOp::kCache;
    case kCmdBlockStatus:
      return IoOp::kBlockStatus;
    default:
      return IoOp::kOther;
  }
}

IoResult IoResultOfError(uint32_t nbd_error) {
  switch (nbd_error) {
    case kOk:
      return IoResult::kOk;
    case kEperm:
      return IoResult::kEperm;
    case kEio:
      return IoResult::kEio;
    case kEnomem:
      return IoResult::kEnomem;
    case kEinval:
      return IoResult::kEinval;
    case kEnospc:
      return IoResult::kEnospc;
    case kEoverflow:
      return IoResult::kEoverflow;
    case kEnotsup:
      return IoResult::kEnotsup;
    case kEshutdown:
      return IoResult::kEshutdown;
    default:
      return IoResult::kOtherError;
  }
}

uint32_t NbdErrorFromStatus(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return kOk;
    case absl::StatusCode::kResourceExhausted:
      return kEnospc;
    case absl::StatusCode::kPermissionDenied:
      return kEperm;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return kEinval;
    case absl::StatusCode::kUnimplemented:
      return kEnotsup;
    case absl::StatusCode::kUnavailable:
      return kEshutdown;
    default:
      return kEio;
  }
}

Transmission::Transmission(Connection& conn, ReplyWriter& writer,
                           RequestBufferSource& buffers,
                           const NegotiationResult& agreed,
                           TransmissionOptions options)
    : conn_(conn),
      writer_(writer),
      buffers_(buffers),
      export_(agreed.export_),
      options_(options) {
  limits_.export_size = export_->size();
  limits_.tx_flags = export_->TransmissionFlags(agreed.structured_replies);
  limits_.structured_replies = agreed.structured_replies;
  limits_.base_allocation = agreed.base_allocation;
  limits_.max_payload = export_->block_sizes().maximum_payload;
  limits_.min_block = export_->block_sizes().minimum;
}

void Transmission::Track(Reply& reply, const RequestHeader& h,
                         uint32_t nbd_error, int64_t start) const {
  if (!writer_.counting()) return;
  RequestRecord& r = reply.record();
  r.active = true;
  r.op = IoOpOfCommand(h.type);
  r.result = IoResultOfError(nbd_error);
  r.bytes = h.length;
  r.start_ns = start;
}

asio::awaitable<void> Transmission::ReplyError(const RequestHeader& h,
                                               uint32_t error,
                                               std::string_view message,
                                               int64_t start, Ticket ticket) {
  SPDLOG_DEBUG("{}: {} offset={} length={} -> {}: {}", conn_.peer(),
               NameOfCommand(h.type), h.offset, h.length, NameOfError(error),
               message);
  std::unique_ptr<Reply> reply = writer_.NewReply();
  if (h.type == kCmdRead && limits_.structured_replies) {
    // READ errors must be structured once structured replies are on.
    size_t msg_len = std::min<size_t>(message.size(), 4096);
    reply->AddChunkHeader(kReplyFlagDone, kChunkError, h.cookie,
                          static_cast<uint32_t>(6 + msg_len));
    uint8_t* p = reply->AddBytes(6 + msg_len);
    PutU32(p, error);
    PutU16(p + 4, static_cast<uint16_t>(msg_len));
    std::memcpy(p + 6, message.data(), msg_len);
  } else {
    reply->AddSimpleReply(error, h.cookie);
  }
  Track(*reply, h, error, start);
  writer_.Send(std::move(reply), std::move(ticket));
  co_return;
}

template <typename Fn>
asio::awaitable<absl::Status> Transmission::RunBackend(Fn fn) {
  // A backend that throws (a bug, std::bad_alloc) fails its call, never the
  // session: every backend call of every path comes through here.
  try {
    if (export_->caps().blocking) {
      co_return co_await RunBlocking(*options_.blocking_pool, std::move(fn));
    }
    co_return fn();
  } catch (const std::exception& e) {
    co_return absl::InternalError(
        absl::StrCat("backend failed unexpectedly: ", e.what()));
  } catch (...) {
    co_return absl::InternalError("backend failed unexpectedly");
  }
}

BufferLease Transmission::AttemptLease(const RequestHeader& h, bool count) {
  return h.type == kCmdRead && ZeroCopyReads()
             ? buffers_.TryChargePinned(PinnedFootprint(h))
             : buffers_.TryAcquire(h.length, count);
}

asio::awaitable<BufferLease> Transmission::RetryLease(const RequestHeader& h) {
  co_await asio::post(conn_.socket().get_executor(), asio::use_awaitable);
  co_return AttemptLease(h, /*count=*/true);
}

void Transmission::LogUnexpected(const RequestHeader& h,
                                 std::string_view what) const {
  spdlog::error("{}: {} on export {} failed unexpectedly: {}", conn_.peer(),
                NameOfCommand(h.type), export_->name(), what);
}

uint64_t Transmission::PinnedFootprint(const RequestHeader& h) const {
  return PinnedFootprintOf(h, export_->caps().pin_unit);
}

asio::awaitable<bool> Transmission::StreamWrite(const RequestHeader& h,
                                                int64_t start, Ticket ticket) {
  Backend& be = export_->backend();
  BufferLease chunk = buffers_.AcquireChunk();
  absl::Status st;
  if (!chunk) st = absl::ResourceExhaustedError("out of memory for buffers");
  uint64_t pos = h.offset;
  uint64_t remaining = h.length;
  while (remaining > 0) {
    if (!st.ok()) {
      // Keep the stream in sync after a failure: drain the rest.
      AwaitingPayload awaiting(conn_);
      if (co_await conn_.Skip(remaining)) co_return false;
      break;
    }
    size_t n = std::min<uint64_t>(remaining, chunk.size());
    auto piece = chunk.span().first(n);
    {
      // Only while reading: a slow backend write is not the client's stall.
      AwaitingPayload awaiting(conn_);
      if (co_await conn_.ReadExact(piece)) co_return false;
    }
    st = co_await RunBackend([&] { return be.Write(pos, piece, false); });
    pos += n;
    remaining -= n;
  }
  if (st.ok() && (h.flags & kCmdFlagFua)) {
    st = co_await RunBackend([&] { return be.Flush(); });
  }
  chunk.Reset();
  if (!st.ok()) {
    co_await ReplyError(h, NbdErrorFromStatus(st), ToStd(st.message()), start,
                        std::move(ticket));
  } else {
    std::unique_ptr<Reply> reply = writer_.NewReply();
    reply->AddSimpleReply(kOk, h.cookie);
    Track(*reply, h, kOk, start);
    writer_.Send(std::move(reply), std::move(ticket));
  }
  co_return true;
}

asio::awaitable<ErrorCode> Transmission::StreamRead(RequestHeader h,
                                                    RequestRecord& record) {
  Backend& be = export_->backend();
  BufferLease chunk = buffers_.AcquireChunk();
  const bool structured = limits_.structured_replies;
  uint64_t pos = h.offset;
  const uint64_t end = h.offset + h.length;
  bool first = true;
  while (pos < end) {
    size_t n = std::min<uint64_t>(end - pos, chunk ? chunk.size() : 0);
    absl::Status st =
        !chunk ? absl::ResourceExhaustedError("out of memory for buffers")
               : co_await RunBackend(
                     [&] { return be.Read(pos, chunk.span().first(n)); });
    uint8_t header[kChunkHeaderSize + 8];
    if (!st.ok()) {
      if (!structured && !first) {
        // A simple reply cannot report an error once its data started.
        spdlog::warn("{}: streamed READ failed mid-reply: {}; closing",
                     conn_.peer(), st.message());
        co_return asio::error::make_error_code(asio::error::connection_aborted);
      }
      uint32_t err = NbdErrorFromStatus(st);
      record.result = IoResultOfError(err);
      if (structured) {
        uint8_t e[kChunkHeaderSize + 6];
        EncodeChunkHeader(e, kReplyFlagDone, kChunkError, h.cookie, 6);
        PutU32(e + kChunkHeaderSize, err);
        PutU16(e + kChunkHeaderSize + 4, 0);
        co_return co_await conn_.WriteAll(e);
      }
      EncodeSimpleReply(header, err, h.cookie);
      co_return co_await conn_.WriteAll(std::span(header, kSimpleReplySize));
    }
    size_t header_len = 0;
    if (structured) {
      uint16_t flags = pos + n == end ? kReplyFlagDone : 0;
      EncodeChunkHeader(header, flags, kChunkOffsetData, h.cookie,
                        static_cast<uint32_t>(8 + n));
      PutU64(header + kChunkHeaderSize, pos);
      header_len = kChunkHeaderSize + 8;
    } else if (first) {
      EncodeSimpleReply(header, kOk, h.cookie);
      header_len = kSimpleReplySize;
    }
    asio::const_buffer bufs[2] = {asio::buffer(header, header_len),
                                  asio::buffer(chunk.data(), n)};
    if (ErrorCode ec = co_await conn_.WriteAll(bufs); ec) co_return ec;
    first = false;
    pos += n;
  }
  co_return ErrorCode{};
}

ReadPieces Transmission::PlanRead(const RequestHeader& h) {
  ReadPieces pieces;
  const bool sparse = limits_.structured_replies && !(h.flags & kCmdFlagDf) &&
                      export_->caps().can_extents;
  if (sparse) {
    uint64_t pos = h.offset;
    bool too_many = false;
    absl::Status es =
        export_->backend().Extents(h.offset, h.length, [&](Extent e) {
          bool zero = (e.flags & kStateZero) != 0;
          if (!pieces.empty() && pieces.back().zero == zero) {
            pieces.back().length += static_cast<uint32_t>(e.length);
          } else if (pieces.size() == kMaxReadChunks) {
            too_many = true;
            return false;
          } else {
            pieces.push_back({pos, static_cast<uint32_t>(e.length), zero});
          }
          pos += e.length;
          return true;
        });
    if (!es.ok() || too_many || pos != h.offset + h.length) pieces.clear();
  }
  if (pieces.empty()) pieces.push_back({h.offset, h.length, false});
  return pieces;
}

absl::Status Transmission::AddPinnedRead(const RequestHeader& h, Reply& reply) {
  Backend& be = export_->backend();
  const bool structured = limits_.structured_replies;
  if (!structured) reply.AddSimpleReply(kOk, h.cookie);
  ReadPieces pieces = PlanRead(h);
  for (size_t i = 0; i < pieces.size(); ++i) {
    const ReadPiece& p = pieces[i];
    const uint16_t flags = i + 1 == pieces.size() ? kReplyFlagDone : 0;
    if (structured && p.zero) {
      reply.AddChunkHeader(flags, kChunkOffsetHole, h.cookie, 12);
      uint8_t* b = reply.AddBytes(12);
      PutU64(b, p.offset);
      PutU32(b + 8, p.length);
      continue;
    }
    if (structured) {
      reply.AddChunkHeader(flags, kChunkOffsetData, h.cookie, 8 + p.length);
      PutU64(reply.AddBytes(8), p.offset);
    }
    absl::Status st = be.ReadPinned(
        p.offset, p.length, [&](std::span<const uint8_t> bytes, Pin* pin) {
          reply.AddPinned(bytes, pin);
        });
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

asio::awaitable<void> Transmission::Execute(RequestHeader h, BufferLease lease,
                                            int64_t start, Ticket ticket) {
  bool failed = false;
  try {
    Backend& be = export_->backend();
    auto run = [this](auto fn) { return RunBackend(std::move(fn)); };
    const bool fua = (h.flags & kCmdFlagFua) != 0;
    absl::Status st;
    std::unique_ptr<Reply> reply;

    switch (h.type) {
      case kCmdRead: {
        ReadPieces pieces;
        if (ZeroCopyReads()) {
          reply = writer_.NewReply();
          st = AddPinnedRead(h, *reply);
          if (!st.ok()) {
            reply.reset();  // releases what it pinned
          } else {
            reply->set_lease(std::move(lease));  // the pins' charge
          }
          break;
        }
        st = co_await run([&]() -> absl::Status {
          pieces = PlanRead(h);
          for (const ReadPiece& p : pieces) {
            if (p.zero) continue;
            absl::Status rs = be.Read(
                p.offset, lease.span().subspan(p.offset - h.offset, p.length));
            if (!rs.ok()) return rs;
          }
          return absl::OkStatus();
        });
        if (!st.ok()) break;
        reply = writer_.NewReply();
        if (!limits_.structured_replies) {
          reply->AddSimpleReply(kOk, h.cookie);
          reply->AddData(lease.span());
        } else {
          for (size_t i = 0; i < pieces.size(); ++i) {
            const ReadPiece& p = pieces[i];
            uint16_t flags = i + 1 == pieces.size() ? kReplyFlagDone : 0;
            if (p.zero) {
              reply->AddChunkHeader(flags, kChunkOffsetHole, h.cookie, 12);
              uint8_t* b = reply->AddBytes(12);
              PutU64(b, p.offset);
              PutU32(b + 8, p.length);
            } else {
              reply->AddChunkHeader(flags, kChunkOffsetData, h.cookie,
                                    8 + p.length);
              PutU64(reply->AddBytes(8), p.offset);
              reply->AddData(
                  lease.span().subspan(p.offset - h.offset, p.length));
            }
          }
        }
        reply->set_lease(std::move(lease));
        break;
      }
      case kCmdWrite:
        st =
            co_await run([&] { return be.Write(h.offset, lease.span(), fua); });
        lease.Reset();
        break;
      case kCmdFlush:
        st = co_await run([&] { return be.Flush(); });
        break;
      case kCmdTrim:
        st = co_await run([&] { return be.Trim(h.offset, h.length, fua); });
        break;
      case kCmdWriteZeroes: {
        ZeroOptions zo;
        zo.may_trim = !(h.flags & kCmdFlagNoHole);
        zo.fast = (h.flags & kCmdFlagFastZero) != 0;
        zo.fua = fua;
        st = co_await run([&] { return be.Zero(h.offset, h.length, zo); });
        break;
      }
      case kCmdCache:
        st = co_await run([&] { return be.Cache(h.offset, h.length); });
        break;
      case kCmdBlockStatus: {
        std::vector<Extent> descs;
        const bool one = (h.flags & kCmdFlagReqOne) != 0;
        st = co_await run([&] {
          return be.Extents(h.offset, h.length, [&](Extent e) {
            if (!descs.empty() && descs.back().flags == e.flags) {
              descs.back().length += e.length;
            } else {
              descs.push_back(e);
            }
            return !one && descs.size() < kMaxDescriptors;
          });
        });
        if (!st.ok()) break;
        if (descs.empty()) descs.push_back(Extent{h.length, 0});
        if (one) descs.resize(1);
        reply = writer_.NewReply();
        uint32_t payload = static_cast<uint32_t>(4 + 8 * descs.size());
        reply->AddChunkHeader(kReplyFlagDone, kChunkBlockStatus, h.cookie,
                              payload);
        uint8_t* b = reply->AddBytes(payload);
        PutU32(b, kBaseAllocationId);
        for (size_t i = 0; i < descs.size(); ++i) {
          uint64_t len = std::min<uint64_t>(descs[i].length, h.length);
          PutU32(b + 4 + 8 * i, static_cast<uint32_t>(len));
          PutU32(b + 8 + 8 * i, descs[i].flags);
        }
        break;
      }
    }

    if (!st.ok()) {
      uint32_t err = NbdErrorFromStatus(st);
      if (err == kEio) {
        spdlog::warn("{}: {} on export {} offset={} length={} failed: {}",
                     conn_.peer(), NameOfCommand(h.type), export_->name(),
                     h.offset, h.length, st.ToString());
      }
      co_await ReplyError(h, err, ToStd(st.message()), start,
                          std::move(ticket));
      co_return;
    }
    if (reply == nullptr) {
      reply = writer_.NewReply();
      reply->AddSimpleReply(kOk, h.cookie);
    }
    if (!reply->record().active) Track(*reply, h, kOk, start);
    writer_.Send(std::move(reply), std::move(ticket));
  } catch (const std::exception& e) {
    failed = true;
    LogUnexpected(h, e.what());
  } catch (...) {
    failed = true;
    LogUnexpected(h, "unknown exception");
  }
  // Still holding the ticket: no reply went out. Answer EIO (counted like
  // any other error) so the request is never left hanging.
  if (failed && ticket) {
    co_await ReplyError(h, kEio, "internal error", start, std::move(ticket));
  }
}

asio::awaitable<void> Transmission::ReadLoop() {
  const bool blocking = export_->caps().blocking;
  for (;;) {
    co_await writer_.WaitInFlightBelow(options_.max_in_flight);
    if (writer_.failed()) {
      end_reason_ = "reply write failed";
      break;
    }
    uint8_t raw[kRequestHeaderSize];
    if (ErrorCode ec = co_await conn_.ReadExact(raw); ec) {
      end_reason_ = ec == asio::error::eof ? "closed" : "read error";
      break;
    }
    absl::StatusOr<RequestHeader> decoded = DecodeRequestHeader(raw);
    if (!decoded.ok()) {
      spdlog::warn("{}: {}; closing connection", conn_.peer(),
                   decoded.status().message());
      end_reason_ = "bad request magic";
      break;
    }
    const RequestHeader h = *decoded;
    ++requests_read_;
    const int64_t start = writer_.counting() ? SteadyNowNs() : 0;
    if (h.type == kCmdDisc) {
      end_reason_ = "disconnect";
      break;
    }
    Ticket ticket = writer_.BeginRequest();
    RequestCheck check = ValidateRequest(h, limits_);
    if (check.error != kOk) {
      if (h.type == kCmdWrite) {
        // Keep the stream in sync: consume the rejected payload.
        AwaitingPayload awaiting(conn_);
        if (ErrorCode ec = co_await conn_.Skip(h.length); ec) {
          end_reason_ = "closed during payload";
          break;
        }
      }
      co_await ReplyError(h, check.error, check.message, start,
                          std::move(ticket));
      continue;
    }
    // Memory is only ever tried for, never waited for: when the caps (or
    // this connection's share) are full, the request streams through a
    // chunk, so no request can wait on memory held by one that waits on
    // its client.
    BufferLease lease;
    if (h.type == kCmdWrite || h.type == kCmdRead) {
      // This request's own ticket is in flight; are others?
      const bool others = writer_.in_flight() > 1;
      lease = AttemptLease(h, /*count=*/!others);
      if (!lease.holds() && others) {
        // A client that sends its next request as soon as a reply arrived
        // can be read before the writer's completion that returns that
        // reply's memory has run: let queued completions run, try again.
        lease = co_await RetryLease(h);
      }
    }
    if (h.type == kCmdWrite) {
      if (!lease) {
        if (!co_await StreamWrite(h, start, std::move(ticket))) {
          end_reason_ = "closed during payload";
          break;
        }
        continue;
      }
      AwaitingPayload awaiting(conn_);
      if (ErrorCode ec = co_await conn_.ReadExact(lease.span()); ec) {
        end_reason_ = "closed during payload";
        break;
      }
    } else if (h.type == kCmdRead) {
      if (!lease.holds()) {
        // Streamed READ: produced chunk by chunk by the writer.
        std::unique_ptr<Reply> reply = writer_.NewReply();
        Track(*reply, h, kOk, start);
        reply->set_producer(
            [this, h, r = reply.get()] { return StreamRead(h, r->record()); });
        writer_.Send(std::move(reply), std::move(ticket));
        continue;
      }
    }
    if (blocking) {
      asio::co_spawn(conn_.socket().get_executor(),
                     Execute(h, std::move(lease), start, std::move(ticket)),
                     [peer = conn_.peer()](std::exception_ptr e) {
                       if (e)
                         spdlog::error("{}: request failed with an exception",
                                       peer);
                     });
    } else {
      co_await Execute(h, std::move(lease), start, std::move(ticket));
    }
  }
  // Answer everything already read before the session ends.
  co_await writer_.WaitInFlightBelow(1);
  writer_.Finish();
}

}  // namespace nbdmgr::nbd
