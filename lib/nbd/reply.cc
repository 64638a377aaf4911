#include "lib/nbd/reply.h"

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

void Reply::AddDataChunkHeader(uint16_t flags, uint64_t cookie, uint64_t offset,
                               uint32_t length) {
  EncodeOffsetDataHeader(AddBytes(kOffsetDataHeaderSize), flags, cookie, offset,
                         length);
}

void Reply::AddHoleChunk(uint16_t flags, uint64_t cookie, uint64_t offset,
                         uint32_t length) {
  EncodeOffsetHole(AddBytes(kOffsetHoleSize), flags, cookie, offset, length);
}

void Reply::AddErrorChunk(uint64_t cookie, uint32_t error,
                          std::string_view message) {
  EncodeErrorChunk(AddBytes(ErrorChunkSize(message)), cookie, error, message);
}

void Reply::AddBlockStatusChunk(uint16_t flags, uint64_t cookie,
                                uint32_t context_id,
                                std::span<const BlockDescriptor> descriptors) {
  EncodeBlockStatusChunk(AddBytes(BlockStatusChunkSize(descriptors.size())),
                         flags, cookie, context_id, descriptors);
}

void Reply::Gather(std::vector<asio::const_buffer>* out) const {
  for (const Segment& s : segments_) {
    const uint8_t* p = s.data != nullptr ? s.data : bytes_.data() + s.offset;
    out->emplace_back(p, s.length);
  }
}

void Reply::ClearSegments() {
  bytes_.clear();
  segments_.clear();
  ReleasePins();
}

void Reply::Reset() {
  ClearSegments();
  lease_.Reset();
  stream_.reset();
  record_ = RequestRecord{};
  ticket_.Reset();
}

}  // namespace nbdmgr::nbd
