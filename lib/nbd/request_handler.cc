#include "lib/nbd/request_handler.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "lib/nbd/errors.h"
#include "lib/util/strings.h"
#include "spdlog/spdlog.h"

namespace nbdmgr::nbd {
namespace {

// Backend extents go on the wire as base:allocation flags unchanged.
static_assert(kExtentHole == kStateHole && kExtentZero == kStateZero);

// A structured READ is split into at most this many data/hole chunks; a
// more fragmented range is sent as one data chunk.
constexpr size_t kMaxReadChunks = 16;
// BLOCK_STATUS replies carry at most this many descriptors.
constexpr size_t kMaxDescriptors = 1024;

// Appends a successful READ's reply: a simple reply header and the data,
// or one chunk per piece (OFFSET_HOLE for zero pieces). `add_data(piece)`
// appends a data piece's bytes; its error stops the reply.
template <typename AddData>
absl::Status AddReadReply(Reply& reply, const RequestHeader& h, bool structured,
                          const ReadPieces& pieces, AddData add_data) {
  if (!structured) reply.AddSimpleReply(kOk, h.cookie);
  for (size_t i = 0; i < pieces.size(); ++i) {
    const ReadPiece& p = pieces[i];
    const uint16_t flags = i + 1 == pieces.size() ? kReplyFlagDone : 0;
    if (structured && p.zero) {
      reply.AddHoleChunk(flags, h.cookie, p.offset, p.length);
      continue;
    }
    if (structured)
      reply.AddDataChunkHeader(flags, h.cookie, p.offset, p.length);
    if (absl::Status st = add_data(p); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace

RequestHandler::RequestHandler(Connection& conn, ReplyWriter& writer,
                               const NegotiationResult& agreed,
                               asio::thread_pool* blocking_pool, IoRing* ring)
    : conn_(conn),
      writer_(writer),
      export_(agreed.export_),
      structured_(agreed.structured_replies),
      meta_contexts_(agreed.meta_contexts),
      call_(export_->backend(), blocking_pool, ring) {}

std::unique_ptr<Reply> RequestHandler::NewReply(const RequestHeader& h,
                                                int64_t start) {
  std::unique_ptr<Reply> reply = writer_.NewReply();
  if (writer_.counting()) {
    RequestRecord& r = reply->record();
    r.active = true;
    r.op = IoOpOfCommand(h.type);
    r.result = IoResult::kOk;
    r.backend_error = false;
    r.bytes = h.length;
    r.start_ns = start;
  }
  return reply;
}

void RequestHandler::SetError(Reply& reply, const RequestHeader& h,
                              uint32_t error, std::string_view message) const {
  SPDLOG_DEBUG("{}: {} offset={} length={} -> {}: {}", conn_.peer(),
               NameOfCommand(h.type), h.offset, h.length, NameOfError(error),
               message);
  reply.ClearSegments();
  reply.record().result = IoResultOfError(error);
  reply.record().backend_error = false;
  if (h.type == kCmdRead && structured_) {
    reply.AddErrorChunk(h.cookie, error, message);
  } else {
    reply.AddSimpleReply(error, h.cookie);
  }
}

void RequestHandler::SetBackendError(Reply& reply, const RequestHeader& h,
                                     const absl::Status& status) const {
  SetError(reply, h, NbdErrorFromStatus(status), ToStd(status.message()));
  reply.record().backend_error = true;
}

void RequestHandler::SendBackendError(const RequestHeader& h,
                                      const absl::Status& status, int64_t start,
                                      Ticket ticket) {
  std::unique_ptr<Reply> reply = NewReply(h, start);
  SetBackendError(*reply, h, status);
  writer_.Send(std::move(reply), std::move(ticket));
}

void RequestHandler::SendError(const RequestHeader& h, uint32_t error,
                               std::string_view message, int64_t start,
                               Ticket ticket) {
  std::unique_ptr<Reply> reply = NewReply(h, start);
  SetError(*reply, h, error, message);
  writer_.Send(std::move(reply), std::move(ticket));
}

void RequestHandler::SendOk(const RequestHeader& h, int64_t start,
                            Ticket ticket) {
  std::unique_ptr<Reply> reply = NewReply(h, start);
  reply->AddSimpleReply(kOk, h.cookie);
  writer_.Send(std::move(reply), std::move(ticket));
}

void RequestHandler::LogFailure(const RequestHeader& h,
                                std::string_view what) const {
  spdlog::warn("{}: {} on export {} offset={} length={} failed: {}",
               conn_.peer(), NameOfCommand(h.type), export_->name(), h.offset,
               h.length, what);
}

asio::awaitable<void> RequestHandler::Execute(RequestHeader h,
                                              BufferLease lease, int64_t start,
                                              Ticket ticket) {
  std::unique_ptr<Reply> reply;
  absl::Status st;
  bool logged = false;  // an exception, logged where caught
  try {
    reply = NewReply(h, start);
    if (h.type == kCmdRead && ZeroCopyReads()) {
      st = ReadZeroCopy(h, lease, *reply);  // runs here: no backend call waits
    } else {
      st = co_await Dispatch(h, lease, *reply);
    }
  } catch (const std::exception& e) {
    st = Unexpected(h, e.what());
    logged = true;
  } catch (...) {
    st = Unexpected(h, "unknown exception");
    logged = true;
  }
  if (reply == nullptr) reply = NewReply(h, start);
  // Marked whatever the outcome (a failed write may have changed blocks),
  // before the reply is sent.
  if (h.type == kCmdWrite || h.type == kCmdTrim || h.type == kCmdWriteZeroes) {
    MarkDirty(h.offset, h.length);
  }
  if (!st.ok()) {
    if (NbdErrorFromStatus(st) == kEio && !logged) {
      LogFailure(h, st.ToString());
    }
    if (logged || IoOpOfCommand(h.type) != IoOp::kOther) {
      // A backend call's status, or an exception (a backend's or a bug).
      SetBackendError(*reply, h, st);
    } else {
      // An unknown command (Unknown()): the client's error, no backend call.
      SetError(*reply, h, NbdErrorFromStatus(st), ToStd(st.message()));
    }
  } else if (reply->segment_count() == 0) {
    reply->AddSimpleReply(kOk, h.cookie);
  }
  // Free a WRITE's payload (or a failed READ's pin charge, after its pins)
  // before the reply is queued; a READ's lease has moved into its reply.
  lease.Reset();
  writer_.Send(std::move(reply), std::move(ticket));
}

absl::Status RequestHandler::Unexpected(const RequestHeader& h,
                                        std::string_view what) const {
  // Never leave a request unanswered: EIO, counted like any other error.
  spdlog::error("{}: {} on export {} failed unexpectedly: {}", conn_.peer(),
                NameOfCommand(h.type), export_->name(), what);
  return absl::InternalError("internal error");
}

asio::awaitable<absl::Status> RequestHandler::Dispatch(const RequestHeader& h,
                                                       BufferLease& lease,
                                                       Reply& reply) {
  // Not a coroutine: returns the handler's own awaitable.
  switch (h.type) {
    case kCmdRead:
      return Read(h, lease, reply);
    case kCmdWrite:
      return Write(h, lease);
    case kCmdFlush:
      return Flush();
    case kCmdTrim:
      return Trim(h);
    case kCmdWriteZeroes:
      return WriteZeroes(h);
    case kCmdCache:
      return Cache(h);
    case kCmdBlockStatus:
      return BlockStatus(h, reply);
    default:  // ValidateRequest admits no other command
      return Unknown();
  }
}

asio::awaitable<absl::Status> RequestHandler::Unknown() {
  co_return absl::InvalidArgumentError("unknown command");
}

bool RequestHandler::SparsePlan(const RequestHeader& h) const {
  const BackendCaps caps = export_->caps();
  return structured_ && !(h.flags & kCmdFlagDf) && caps.can_extents &&
         h.length >= caps.sparse_read_min;
}

ReadPieces RequestHandler::PlanRead(const RequestHeader& h) const {
  ReadPieces pieces;
  if (SparsePlan(h)) {
    uint64_t pos = h.offset;
    bool too_many = false;
    absl::Status es =
        call_.backend().ReadExtents(h.offset, h.length, [&](Extent e) {
          bool zero = (e.flags & kExtentZero) != 0;
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

absl::Status RequestHandler::ReadZeroCopy(const RequestHeader& h,
                                          BufferLease& lease, Reply& reply) {
  Backend& be = call_.backend();
  absl::Status st =
      AddReadReply(reply, h, structured_, PlanRead(h), [&](const ReadPiece& p) {
        return be.ReadPinned(p.offset, p.length,
                             [&](std::span<const uint8_t> bytes, Pin* pin) {
                               reply.AddPinned(bytes, pin);
                             });
      });
  if (st.ok()) reply.set_lease(std::move(lease));  // the pins' charge
  return st;
}

asio::awaitable<absl::Status> RequestHandler::Read(const RequestHeader& h,
                                                   BufferLease& lease,
                                                   Reply& reply) {
  const std::span<uint8_t> buf = lease.span();
  auto part = [&](const ReadPiece& p) {
    return buf.subspan(p.offset - h.offset, p.length);
  };
  ReadPieces pieces;
  absl::Status st;
  if (call_.async_reads()) {
    // The data is read through the ring. Holes are looked up (lseek, which
    // may wait on the file system: NFS, FUSE) on the pool, and only for
    // READs of sparse_read_min or more; smaller ones are planned here.
    if (SparsePlan(h)) {
      st = co_await call_([&] {
        pieces = PlanRead(h);
        return absl::OkStatus();
      });
      if (!st.ok()) co_return st;
    } else {
      pieces = PlanRead(h);
    }
    for (const ReadPiece& p : pieces) {
      if (!p.zero) st = co_await call_.Read(p.offset, part(p));
      if (!st.ok()) co_return st;
    }
  } else {
    // One trip to the pool for the plan and the reads.
    st = co_await call_([&]() -> absl::Status {
      pieces = PlanRead(h);
      for (const ReadPiece& p : pieces) {
        if (p.zero) continue;
        if (absl::Status rs = call_.backend().Read(p.offset, part(p));
            !rs.ok()) {
          return rs;
        }
      }
      return absl::OkStatus();
    });
    if (!st.ok()) co_return st;
  }
  st = AddReadReply(reply, h, structured_, pieces, [&](const ReadPiece& p) {
    reply.AddData(part(p));
    return absl::OkStatus();
  });
  reply.set_lease(std::move(lease));  // the data's memory, until written
  co_return st;
}

asio::awaitable<absl::Status> RequestHandler::Write(const RequestHeader& h,
                                                    BufferLease& lease) {
  return call_.Write(h.offset, lease.span(), (h.flags & kCmdFlagFua) != 0);
}

asio::awaitable<absl::Status> RequestHandler::Flush() { return call_.Flush(); }

asio::awaitable<absl::Status> RequestHandler::Trim(const RequestHeader& h) {
  const bool fua = (h.flags & kCmdFlagFua) != 0;
  return call_([&be = call_.backend(), h, fua] {
    return be.Trim(h.offset, h.length, fua);
  });
}

asio::awaitable<absl::Status> RequestHandler::WriteZeroes(
    const RequestHeader& h) {
  ZeroOptions zo;
  zo.may_trim = !(h.flags & kCmdFlagNoHole);
  zo.fast = (h.flags & kCmdFlagFastZero) != 0;
  zo.fua = (h.flags & kCmdFlagFua) != 0;
  return call_([&be = call_.backend(), h, zo] {
    return be.Zero(h.offset, h.length, zo);
  });
}

asio::awaitable<absl::Status> RequestHandler::Cache(const RequestHeader& h) {
  // Inline for backends that never block (memory, null: nothing to
  // prefetch), on the pool for the rest (fadvise may wait for the disk).
  return call_(
      [&be = call_.backend(), h] { return be.Cache(h.offset, h.length); });
}

asio::awaitable<absl::Status> RequestHandler::BlockStatus(
    const RequestHeader& h, Reply& reply) {
  // One chunk per selected context, in the order negotiated, DONE on the
  // last. Each: runs of equal flags merged, at most kMaxDescriptors (one
  // with REQ_ONE), lengths clamped to the request's (a backend may report
  // an extent running past it).
  const bool one = (h.flags & kCmdFlagReqOne) != 0;
  std::vector<BlockDescriptor> descs;
  auto add = [&](uint64_t length, uint32_t flags) {
    if (!descs.empty() && descs.back().flags == flags) {
      descs.back().length = static_cast<uint32_t>(
          std::min<uint64_t>(descs.back().length + length, h.length));
    } else {
      descs.push_back(
          {static_cast<uint32_t>(std::min<uint64_t>(length, h.length)), flags});
    }
    return !one && descs.size() < kMaxDescriptors;
  };
  for (size_t i = 0; i < meta_contexts_.size(); ++i) {
    const NegotiationResult::MetaContext& mc = meta_contexts_[i];
    descs.clear();
    if (mc.bitmap == nullptr) {
      absl::Status st = co_await call_([&] {
        return call_.backend().Extents(h.offset, h.length, [&](Extent e) {
          return add(e.length, e.flags);
        });
      });
      if (!st.ok()) co_return st;
    } else {
      // In memory: answered here, without a trip to the pool.
      mc.bitmap->Extents(h.offset, h.length, [&](uint64_t len, bool dirty) {
        return add(len, dirty ? kStateDirty : 0);
      });
    }
    if (descs.empty()) descs.push_back({h.length, 0});
    if (one) descs.resize(1);
    const uint16_t flags =
        i + 1 == meta_contexts_.size() ? kReplyFlagDone : uint16_t{0};
    reply.AddBlockStatusChunk(flags, h.cookie, mc.id, descs);
  }
  co_return absl::OkStatus();
}

}  // namespace nbdmgr::nbd
