#include "lib/nbd/reply_writer.h"

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "spdlog/spdlog.h"

namespace nbdmgr::nbd {

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
        static_cast<uint64_t>(std::max<int64_t>(0, now - rec.start_ns)),
        rec.backend_error);
  }
}

asio::awaitable<ErrorCode> ReplyWriter::WriteBatch() {
  iov_.clear();
  while (!queue_.empty() && queue_.front()->stream() == nullptr &&
         (batch_.empty() ||
          iov_.size() + queue_.front()->segment_count() <= kMaxBatchSegments)) {
    queue_.front()->Gather(&iov_);
    batch_.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  co_return co_await conn_.WriteAll(iov_);
}

asio::awaitable<ErrorCode> ReplyWriter::WriteStreamed() {
  batch_.push_back(std::move(queue_.front()));
  queue_.pop_front();
  Reply& reply = *batch_.front();
  for (;;) {
    reply.ClearSegments();
    ReplyStream::Part part = ReplyStream::Part::kAbort;
    try {
      part = co_await reply.stream()->Next(reply);
    } catch (const std::exception& e) {
      spdlog::error("{}: streaming a reply failed: {}", conn_.peer(), e.what());
    }
    if (part == ReplyStream::Part::kAbort) {
      co_return asio::error::make_error_code(asio::error::connection_aborted);
    }
    iov_.clear();
    reply.Gather(&iov_);
    if (ErrorCode ec = co_await conn_.WriteAll(iov_); ec) co_return ec;
    if (part == ReplyStream::Part::kLast) co_return ErrorCode{};
  }
}

asio::awaitable<void> ReplyWriter::Run() {
  for (;;) {
    while (queue_.empty()) {
      if (failed_ || (finishing_ && in_flight_ == 0)) co_return;
      co_await Wait(writer_wake_);
    }
    batch_.clear();
    ErrorCode ec = queue_.front()->stream() != nullptr
                       ? co_await WriteStreamed()
                       : co_await WriteBatch();
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
