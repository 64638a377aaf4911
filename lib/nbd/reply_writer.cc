#include "lib/nbd/reply_writer.h"

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "lib/nbd/codec.h"
#include "spdlog/spdlog.h"

namespace nbdmgr::nbd {

uint8_t* Reply::AddBytes(size_t n) {
  size_t offset = bytes_.size();
  bytes_.resize(offset + n);
  if (!segments_.empty() && segments_.back().data == nullptr) {
    segments_.back().length += n;  // extend the previous owned segment
  } else {
    segments_.push_back(Segment{nullptr, offset, n});
  }
  return bytes_.data() + offset;
}

void Reply::AddData(std::span<const uint8_t> data) {
  if (data.empty()) return;
  segments_.push_back(Segment{data.data(), 0, data.size()});
}

void Reply::AddPinned(std::span<const uint8_t> data, Pin* pin) {
  if (pin != nullptr) pins_.push_back(pin);
  AddData(data);
}

void Reply::ReleasePins() {
  for (Pin* pin : pins_) pin->Release();
  pins_.clear();
}

void Reply::AddSimpleReply(uint32_t error, uint64_t cookie) {
  EncodeSimpleReply(AddBytes(kSimpleReplySize), error, cookie);
}

void Reply::AddChunkHeader(uint16_t flags, uint16_t type, uint64_t cookie,
                           uint32_t payload_length) {
  EncodeChunkHeader(AddBytes(kChunkHeaderSize), flags, type, cookie,
                    payload_length);
}

void Reply::Gather(std::vector<asio::const_buffer>* out) const {
  for (const Segment& s : segments_) {
    const uint8_t* p = s.data != nullptr ? s.data : bytes_.data() + s.offset;
    out->emplace_back(p, s.length);
  }
}

void Reply::Reset() {
  bytes_.clear();
  segments_.clear();
  lease_.Reset();
  ReleasePins();
  producer_ = nullptr;
  record_ = RequestRecord{};
  ticket_.Reset();
}

void Ticket::Reset() {
  if (ReplyWriter* w = std::exchange(w_, nullptr)) w->EndRequest();
}

void ReplyWriter::EndRequest() {
  --in_flight_;
  if (stats_ != nullptr) stats_->SetInFlight(in_flight_);
  Notify(reader_wake_);
  if (finishing_ && in_flight_ == 0) Notify(writer_wake_);
}

ReplyWriter::ReplyWriter(Connection& conn, ConnectionIoStats* stats)
    : conn_(conn),
      stats_(stats),
      writer_wake_(conn.socket().get_executor()),
      reader_wake_(conn.socket().get_executor()) {}

ReplyWriter::~ReplyWriter() {
  // Replies still here end their tickets while the timers they notify
  // still exist.
  batch_.clear();
  queue_.clear();
  free_.clear();
}

std::unique_ptr<Reply> ReplyWriter::NewReply() {
  if (free_.empty()) return std::make_unique<Reply>();
  std::unique_ptr<Reply> r = std::move(free_.back());
  free_.pop_back();
  return r;
}

void ReplyWriter::Recycle(std::unique_ptr<Reply> reply) {
  reply->Reset();
  if (free_.size() < kMaxFreeReplies) free_.push_back(std::move(reply));
}

void ReplyWriter::Send(std::unique_ptr<Reply> reply, Ticket ticket) {
  reply->set_ticket(std::move(ticket));
  if (failed_) {
    // Nobody can read it: drop it, and its request is over.
    Recycle(std::move(reply));
    return;
  }
  queue_.push_back(std::move(reply));
  Notify(writer_wake_);
}

asio::awaitable<void> ReplyWriter::Wait(asio::steady_timer& t) {
  t.expires_at(asio::steady_timer::time_point::max());
  co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
}

asio::awaitable<void> ReplyWriter::WaitInFlightBelow(size_t limit) {
  while (in_flight_ >= limit) co_await Wait(reader_wake_);
}

void ReplyWriter::Abandon() {
  failed_ = true;
  for (auto& r : batch_) Recycle(std::move(r));
  batch_.clear();
  for (auto& r : queue_) Recycle(std::move(r));
  queue_.clear();
  Notify(reader_wake_);
}

void ReplyWriter::Finish() {
  finishing_ = true;
  Notify(writer_wake_);
}

void ReplyWriter::RecordBatch() {
  if (stats_ == nullptr) return;
  const int64_t now = SteadyNowNs();
  for (const auto& r : batch_) {
    const RequestRecord& rec = r->record();
    if (!rec.active) continue;
    stats_->Record(
        rec.op, rec.result, rec.bytes,
        static_cast<uint64_t>(std::max<int64_t>(0, now - rec.start_ns)));
  }
}

asio::awaitable<void> ReplyWriter::Run() {
  for (;;) {
    while (queue_.empty()) {
      if (failed_ || (finishing_ && in_flight_ == 0)) co_return;
      co_await Wait(writer_wake_);
    }
    batch_.clear();
    iov_.clear();
    ErrorCode ec;
    if (queue_.front()->streamed()) {
      // A streamed reply owns the socket until it is complete.
      batch_.push_back(std::move(queue_.front()));
      queue_.pop_front();
      try {
        ec = co_await batch_.front()->producer()();
      } catch (const std::exception& e) {
        spdlog::error("{}: streaming a reply failed: {}", conn_.peer(),
                      e.what());
        ec = asio::error::make_error_code(asio::error::connection_aborted);
      }
    } else {
      while (!queue_.empty() && !queue_.front()->streamed() &&
             (batch_.empty() || iov_.size() + queue_.front()->segment_count() <=
                                    kMaxBatchSegments)) {
        queue_.front()->Gather(&iov_);
        batch_.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      ec = co_await conn_.WriteAll(iov_);
    }
    if (!ec) RecordBatch();
    for (auto& r : batch_) Recycle(std::move(r));  // ends their tickets
    batch_.clear();
    if (ec) {
      if (ec != asio::error::operation_aborted) {
        spdlog::info("{}: writing replies failed: {}", conn_.peer(),
                     ec.message());
      }
      conn_.Close();  // wakes a reader blocked on the socket
      Abandon();      // drops what is queued and every later reply
    }
    Notify(reader_wake_);
  }
}

}  // namespace nbdmgr::nbd
