#include "lib/nbd/streamed_read.h"

#include <algorithm>

#include "lib/nbd/errors.h"
#include "lib/util/strings.h"
#include "spdlog/spdlog.h"

namespace nbdmgr::nbd {

asio::awaitable<ReplyStream::Part> StreamedRead::Next(Reply& reply) {
  if (!started_ && !chunk_) chunk_ = buffers_.AcquireChunk();
  const uint64_t end = h_.offset + h_.length;
  const size_t n = std::min<uint64_t>(end - pos_, chunk_ ? chunk_.size() : 0);
  const std::span<uint8_t> data = chunk_.span().first(n);
  absl::Status st =
      !chunk_ ? absl::ResourceExhaustedError("out of memory for buffers")
              : co_await handler_.call().Read(pos_, data);
  const bool structured = handler_.structured_replies();
  if (!st.ok()) {
    if (started_ && !structured) {
      spdlog::warn("{}: streamed READ failed mid-reply: {}; closing",
                   handler_.peer(), st.message());
      co_return Part::kAbort;
    }
    if (chunk_) {
      handler_.SetBackendError(reply, h_, st);
    } else {
      // No buffer, so no backend call: not a backend error.
      handler_.SetError(reply, h_, NbdErrorFromStatus(st), ToStd(st.message()));
    }
    co_return Part::kLast;
  }
  const bool last = pos_ + n == end;
  if (structured) {
    reply.AddDataChunkHeader(last ? kReplyFlagDone : 0, h_.cookie, pos_,
                             static_cast<uint32_t>(n));
  } else if (!started_) {
    reply.AddSimpleReply(kOk, h_.cookie);
  }
  reply.AddData(data);
  started_ = true;
  pos_ += n;
  co_return last ? Part::kLast : Part::kMore;
}

}  // namespace nbdmgr::nbd
