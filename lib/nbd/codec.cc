#include "lib/nbd/codec.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "lib/util/strings.h"

namespace nbdmgr::nbd {

// Grows the output by `n` bytes and returns where they start. (Resizing and
// writing in place, rather than vector::insert of a range, also keeps GCC
// 12's -O3 -Wstringop-overflow from misfiring on a vector that starts
// empty.)
uint8_t* ByteWriter::Grow(size_t n) {
  const size_t at = out_->size();
  out_->resize(at + n);
  return out_->data() + at;
}
ByteWriter& ByteWriter::U16(uint16_t v) {
  PutU16(Grow(2), v);
  return *this;
}
ByteWriter& ByteWriter::U32(uint32_t v) {
  PutU32(Grow(4), v);
  return *this;
}
ByteWriter& ByteWriter::U64(uint64_t v) {
  PutU64(Grow(8), v);
  return *this;
}
ByteWriter& ByteWriter::Bytes(std::string_view s) {
  if (!s.empty()) std::memcpy(Grow(s.size()), s.data(), s.size());
  return *this;
}
ByteWriter& ByteWriter::Zeroes(size_t n) {
  Grow(n);  // resize value-initializes: zeroes
  return *this;
}

std::optional<uint16_t> ByteReader::U16() {
  if (remaining() < 2) return std::nullopt;
  uint16_t v = GetU16(in_.data() + pos_);
  pos_ += 2;
  return v;
}
std::optional<uint32_t> ByteReader::U32() {
  if (remaining() < 4) return std::nullopt;
  uint32_t v = GetU32(in_.data() + pos_);
  pos_ += 4;
  return v;
}
std::optional<uint64_t> ByteReader::U64() {
  if (remaining() < 8) return std::nullopt;
  uint64_t v = GetU64(in_.data() + pos_);
  pos_ += 8;
  return v;
}
std::optional<std::string> ByteReader::String(size_t n) {
  if (remaining() < n) return std::nullopt;
  std::string s(reinterpret_cast<const char*>(in_.data() + pos_), n);
  pos_ += n;
  return s;
}

std::array<uint8_t, kGreetingSize> EncodeGreeting(uint16_t handshake_flags) {
  std::array<uint8_t, kGreetingSize> out;
  PutU64(out.data(), kNbdMagic);
  PutU64(out.data() + 8, kIHaveOpt);
  PutU16(out.data() + 16, handshake_flags);
  return out;
}

OptionHeader DecodeOptionHeader(
    std::span<const uint8_t, kOptionHeaderSize> in) {
  return OptionHeader{GetU64(in.data()), GetU32(in.data() + 8),
                      GetU32(in.data() + 12)};
}

std::array<uint8_t, kOptionReplyHeaderSize> EncodeOptionReplyHeader(
    uint32_t option, uint32_t reply_type, uint32_t length) {
  std::array<uint8_t, kOptionReplyHeaderSize> out;
  PutU64(out.data(), kOptionReplyMagic);
  PutU32(out.data() + 8, option);
  PutU32(out.data() + 12, reply_type);
  PutU32(out.data() + 16, length);
  return out;
}

absl::StatusOr<RequestHeader> DecodeRequestHeader(
    std::span<const uint8_t, kRequestHeaderSize> in) {
  uint32_t magic = GetU32(in.data());
  if (magic != kRequestMagic) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad request magic 0x", absl::Hex(magic)));
  }
  RequestHeader h;
  h.flags = GetU16(in.data() + 4);
  h.type = GetU16(in.data() + 6);
  h.cookie = GetU64(in.data() + 8);
  h.offset = GetU64(in.data() + 16);
  h.length = GetU32(in.data() + 24);
  return h;
}

std::array<uint8_t, kRequestHeaderSize> EncodeRequestHeader(
    const RequestHeader& h) {
  std::array<uint8_t, kRequestHeaderSize> out;
  PutU32(out.data(), kRequestMagic);
  PutU16(out.data() + 4, h.flags);
  PutU16(out.data() + 6, h.type);
  PutU64(out.data() + 8, h.cookie);
  PutU64(out.data() + 16, h.offset);
  PutU32(out.data() + 24, h.length);
  return out;
}

void EncodeSimpleReply(uint8_t* out, uint32_t error, uint64_t cookie) {
  PutU32(out, kSimpleReplyMagic);
  PutU32(out + 4, error);
  PutU64(out + 8, cookie);
}

void EncodeChunkHeader(uint8_t* out, uint16_t flags, uint16_t type,
                       uint64_t cookie, uint32_t length) {
  PutU32(out, kStructuredReplyMagic);
  PutU16(out + 4, flags);
  PutU16(out + 6, type);
  PutU64(out + 8, cookie);
  PutU32(out + 16, length);
}

void EncodeOffsetDataHeader(uint8_t* out, uint16_t flags, uint64_t cookie,
                            uint64_t offset, uint32_t length) {
  EncodeChunkHeader(out, flags, kChunkOffsetData, cookie, 8 + length);
  PutU64(out + kChunkHeaderSize, offset);
}

void EncodeOffsetHole(uint8_t* out, uint16_t flags, uint64_t cookie,
                      uint64_t offset, uint32_t length) {
  EncodeChunkHeader(out, flags, kChunkOffsetHole, cookie, 12);
  PutU64(out + kChunkHeaderSize, offset);
  PutU32(out + kChunkHeaderSize + 8, length);
}

std::string_view ErrorChunkMessage(std::string_view message) {
  if (message.size() > kMaxErrorMessage) {
    size_t n = kMaxErrorMessage;
    // message[n] is the first byte cut: back up off a character's tail.
    while (n > 0 && (static_cast<uint8_t>(message[n]) & 0xC0) == 0x80) --n;
    message = message.substr(0, n);
  }
  if (message.find('\0') != std::string_view::npos || !IsValidUtf8(message)) {
    return {};
  }
  return message;
}

void EncodeErrorChunk(uint8_t* out, uint64_t cookie, uint32_t error,
                      std::string_view message) {
  const std::string_view m = ErrorChunkMessage(message);
  EncodeChunkHeader(out, kReplyFlagDone, kChunkError, cookie,
                    static_cast<uint32_t>(6 + m.size()));
  PutU32(out + kChunkHeaderSize, error);
  PutU16(out + kChunkHeaderSize + 4, static_cast<uint16_t>(m.size()));
  if (!m.empty()) std::memcpy(out + kChunkHeaderSize + 6, m.data(), m.size());
}

void EncodeBlockStatusChunk(uint8_t* out, uint16_t flags, uint64_t cookie,
                            uint32_t context_id,
                            std::span<const BlockDescriptor> descriptors) {
  EncodeChunkHeader(out, flags, kChunkBlockStatus, cookie,
                    static_cast<uint32_t>(4 + 8 * descriptors.size()));
  PutU32(out + kChunkHeaderSize, context_id);
  uint8_t* p = out + kChunkHeaderSize + 4;
  for (const BlockDescriptor& d : descriptors) {
    PutU32(p, d.length);
    PutU32(p + 4, d.flags);
    p += 8;
  }
}

namespace {

// u32 length + export name, as INFO, GO and the META_CONTEXT options start.
absl::StatusOr<std::string> ReadExportName(ByteReader& r) {
  std::optional<uint32_t> name_len = r.U32();
  if (!name_len) return absl::InvalidArgumentError("payload too short");
  if (*name_len > kMaxStringLength) {
    return absl::InvalidArgumentError("export name too long");
  }
  std::optional<std::string> name = r.String(*name_len);
  if (!name) return absl::InvalidArgumentError("name length past payload");
  return std::move(*name);
}

}  // namespace

absl::StatusOr<InfoRequest> ParseInfoRequest(std::span<const uint8_t> payload) {
  ByteReader r(payload);
  absl::StatusOr<std::string> name = ReadExportName(r);
  if (!name.ok()) return name.status();
  std::optional<uint16_t> count = r.U16();
  if (!count) return absl::InvalidArgumentError("missing info request count");
  if (r.remaining() != size_t{*count} * 2) {
    return absl::InvalidArgumentError(
        "info request count disagrees with length");
  }
  InfoRequest req;
  req.name = std::move(*name);
  for (uint16_t i = 0; i < *count; ++i) {
    uint16_t type = *r.U16();
    if (type < kInfoTypeCount) req.requested.set(type);
  }
  return req;
}

namespace {

// Reads one query (u32 length + bytes) as a view into the reader's input.
absl::StatusOr<std::string_view> ReadQuery(std::span<const uint8_t> in,
                                           size_t& pos) {
  if (in.size() - pos < 4) {
    return absl::InvalidArgumentError("query length past payload");
  }
  uint32_t len = GetU32(in.data() + pos);
  pos += 4;
  if (len > kMaxStringLength) {
    return absl::InvalidArgumentError("query too long");
  }
  if (in.size() - pos < len) {
    return absl::InvalidArgumentError("query past payload");
  }
  std::string_view q(reinterpret_cast<const char*>(in.data() + pos), len);
  pos += len;
  return q;
}

}  // namespace

absl::StatusOr<MetaContextRequest> ParseMetaContextRequest(
    std::span<const uint8_t> payload) {
  ByteReader r(payload);
  absl::StatusOr<std::string> name = ReadExportName(r);
  if (!name.ok()) return name.status();
  std::optional<uint32_t> count = r.U32();
  if (!count) return absl::InvalidArgumentError("missing query count");
  // Each query needs at least its 4-byte length.
  if (*count > r.remaining() / 4) {
    return absl::InvalidArgumentError("query count past payload");
  }
  MetaContextRequest req;
  req.export_name = std::move(*name);
  req.query_count = *count;
  req.queries = payload.subspan(payload.size() - r.remaining());
  // Validate every query now so that ForEachQuery cannot fail.
  size_t pos = 0;
  for (uint32_t i = 0; i < *count; ++i) {
    absl::StatusOr<std::string_view> q = ReadQuery(req.queries, pos);
    if (!q.ok()) return q.status();
  }
  if (pos != req.queries.size()) {
    return absl::InvalidArgumentError("trailing bytes after queries");
  }
  return req;
}

void ForEachQuery(const MetaContextRequest& req,
                  absl::FunctionRef<void(std::string_view)> fn) {
  size_t pos = 0;
  for (uint32_t i = 0; i < req.query_count; ++i) {
    absl::StatusOr<std::string_view> q = ReadQuery(req.queries, pos);
    if (!q.ok()) return;  // not from ParseMetaContextRequest
    fn(*q);
  }
}

std::vector<uint8_t> EncodeInfoExport(uint64_t size, uint16_t tx_flags) {
  std::vector<uint8_t> out;
  ByteWriter(&out).U16(kInfoExport).U64(size).U16(tx_flags);
  return out;
}

std::vector<uint8_t> EncodeInfoString(uint16_t info_type, std::string_view s) {
  std::vector<uint8_t> out;
  ByteWriter(&out).U16(info_type).Bytes(s);
  return out;
}

std::vector<uint8_t> EncodeInfoBlockSize(uint32_t minimum, uint32_t preferred,
                                         uint32_t maximum) {
  std::vector<uint8_t> out;
  ByteWriter(&out).U16(kInfoBlockSize).U32(minimum).U32(preferred).U32(maximum);
  return out;
}

std::vector<uint8_t> EncodeServerReply(std::string_view name,
                                       std::string_view description) {
  std::vector<uint8_t> out;
  ByteWriter(&out)
      .U32(static_cast<uint32_t>(name.size()))
      .Bytes(name)
      .Bytes(description);
  return out;
}

std::vector<uint8_t> EncodeMetaContextReply(uint32_t id,
                                            std::string_view name) {
  std::vector<uint8_t> out;
  ByteWriter(&out).U32(id).Bytes(name);
  return out;
}

std::vector<uint8_t> EncodeExportNameReply(uint64_t size, uint16_t tx_flags,
                                           bool no_zeroes) {
  std::vector<uint8_t> out;
  ByteWriter w(&out);
  w.U64(size).U16(tx_flags);
  if (!no_zeroes) w.Zeroes(kExportNameZeroes);
  return out;
}

}  // namespace nbdmgr::nbd
