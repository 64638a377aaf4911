#include "lib/nbd/transmission.h"

#include <vector>

#include <boost/asio/co_spawn.hpp>

#include "absl/container/inlined_vector.h"
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

struct ReadPiece {
  uint64_t offset;
  uint32_t length;
  bool zero;  // sent as OFFSET_HOLE
};
using ReadPieces = absl::InlinedVector<ReadPiece, 4>;

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
  const bool writes = h.type == kCmdWrite || h.type == kCmdTrim ||
                      h.type == kCmdWriteZeroes;
  if (writes && (l.tx_flags & kTxReadOnly)) {
    return {kEperm, "export is read-only"};
  }
  if (h.type == kCmdFlush) return {};
  if (h.length == 0) return {kEinval, "zero-length request"};
  if ((h.type == kCmdRead || h.type == kCmdWrite) &&
      h.length > l.max_payload) {
    return {kEinval, "request longer than the maximum payload"};
  }
  if (h.offset > l.export_size || h.length > l.export_size - h.offset) {
    return {h.type == kCmdWrite || h.type == kCmdWriteZeroes ? kEnospc : kEinval,
            "request past the end of the export"};
  }
  if (h.type == kCmdBlockStatus && !l.base_allocation) {
    return {kEinval, "no metadata context negotiated"};
  }
  return {};
}

uint32_t NbdErrorFromStatus(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk: return kOk;
    case absl::StatusCode::kResourceExhausted: return kEnospc;
    case absl::StatusCode::kPermissionDenied: return kEperm;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange: return kEinval;
    case absl::StatusCode::kUnimplemented: return kEnotsup;
    case absl::StatusCode::kUnavailable: return kEshutdown;
    default: return kEio;
  }
}

Transmission::Transmission(Connection& conn, ReplyWriter& writer,
                           RequestBufferSource& buffers,
                           const NegotiationResult& agreed,
                           TransmissionOptions options)
    : conn_(conn), writer_(writer), buffers_(buffers), export_(agreed.export_),
      options_(options) {
  limits_.export_size = export_->size();
  limits_.tx_flags = export_->TransmissionFlags(agreed.structured_replies);
  limits_.structured_replies = agreed.structured_replies;
  limits_.base_allocation = agreed.base_allocation;
  limits_.max_payload = export_->block_sizes().maximum_payload;
}

asio::awaitable<void> Transmission::ReplyError(const RequestHeader& h,
                                               uint32_t error,
                                               std::string_view message) {
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
  writer_.Send(std::move(reply));
  co_return;
}

asio::awaitable<void> Transmission::Execute(RequestHeader h,
                                            BufferLease lease) {
  Backend& be = export_->backend();
  // Runs `fn` inline for in-memory backends, on the pool for blocking ones.
  auto run = [this](auto fn) -> asio::awaitable<absl::Status> {
    if (export_->caps().blocking) {
      co_return co_await RunBlocking(*options_.blocking_pool, std::move(fn));
    }
    co_return fn();
  };
  const bool fua = (h.flags & kCmdFlagFua) != 0;
  absl::Status st;
  std::unique_ptr<Reply> reply;

  switch (h.type) {
    case kCmdRead: {
      ReadPieces pieces;
      const bool sparse = limits_.structured_replies &&
                          !(h.flags & kCmdFlagDf) &&
                          export_->caps().can_extents;
      st = co_await run([&]() -> absl::Status {
        if (sparse) {
          uint64_t pos = h.offset;
          bool too_many = false;
          absl::Status es = be.Extents(h.offset, h.length, [&](Extent e) {
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
          if (!es.ok() || too_many || pos != h.offset + h.length) {
            pieces.clear();
          }
        }
        if (pieces.empty()) pieces.push_back({h.offset, h.length, false});
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
            reply->AddData(lease.span().subspan(p.offset - h.offset, p.length));
          }
        }
      }
      reply->set_lease(std::move(lease));
      break;
    }
    case kCmdWrite:
      st = co_await run([&] { return be.Write(h.offset, lease.span(), fua); });
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
    co_await ReplyError(h, err, ToStd(st.message()));
    co_return;
  }
  if (reply == nullptr) {
    reply = writer_.NewReply();
    reply->AddSimpleReply(kOk, h.cookie);
  }
  writer_.Send(std::move(reply));
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
    if (h.type == kCmdDisc) {
      end_reason_ = "disconnect";
      break;
    }
    RequestCheck check = ValidateRequest(h, limits_);
    if (check.error != kOk) {
      if (h.type == kCmdWrite) {
        // Keep the stream in sync: consume the rejected payload.
        if (ErrorCode ec = co_await conn_.Skip(h.length); ec) {
          end_reason_ = "closed during payload";
          break;
        }
      }
      writer_.BeginRequest();
      co_await ReplyError(h, check.error, check.message);
      continue;
    }
    BufferLease lease;
    if (h.type == kCmdRead || h.type == kCmdWrite) {
      lease = co_await buffers_.Acquire(h.length);
      if (h.type == kCmdWrite) {
        if (ErrorCode ec = co_await conn_.ReadExact(lease.span()); ec) {
          end_reason_ = "closed during payload";
          break;
        }
      }
    }
    writer_.BeginRequest();
    if (blocking) {
      asio::co_spawn(conn_.socket().get_executor(),
                     Execute(h, std::move(lease)),
                     [peer = conn_.peer()](std::exception_ptr e) {
                       if (e) spdlog::error("{}: request failed with an exception", peer);
                     });
    } else {
      co_await Execute(h, std::move(lease));
    }
  }
  // Answer everything already read before the session ends.
  co_await writer_.WaitInFlightBelow(1);
  writer_.Finish();
}

}  // namespace nbdmgr::nbd
