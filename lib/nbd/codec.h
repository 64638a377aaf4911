#ifndef NBDMGR_LIB_NBD_CODEC_H_
#define NBDMGR_LIB_NBD_CODEC_H_

// Pure encoding and decoding of NBD wire structures: no I/O, no state, safe
// to feed arbitrary bytes (fuzzable). Every length read from the wire is
// checked against the bytes actually present before it is used.

#include <algorithm>
#include <array>
#include <bitset>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "lib/nbd/wire.h"

namespace nbdmgr::nbd {

// Big-endian loads and stores.
inline void PutU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline void PutU32(uint8_t* p, uint32_t v) {
  PutU16(p, static_cast<uint16_t>(v >> 16));
  PutU16(p + 2, static_cast<uint16_t>(v));
}
inline void PutU64(uint8_t* p, uint64_t v) {
  PutU32(p, static_cast<uint32_t>(v >> 32));
  PutU32(p + 4, static_cast<uint32_t>(v));
}
inline uint16_t GetU16(const uint8_t* p) {
  return static_cast<uint16_t>((uint16_t{p[0]} << 8) | p[1]);
}
inline uint32_t GetU32(const uint8_t* p) {
  return (uint32_t{GetU16(p)} << 16) | GetU16(p + 2);
}
inline uint64_t GetU64(const uint8_t* p) {
  return (uint64_t{GetU32(p)} << 32) | GetU32(p + 4);
}

// Appends big-endian values to a byte vector it does not own.
class ByteWriter {
 public:
  explicit ByteWriter(std::vector<uint8_t>* out) : out_(out) {}
  ByteWriter& U16(uint16_t v);
  ByteWriter& U32(uint32_t v);
  ByteWriter& U64(uint64_t v);
  ByteWriter& Bytes(std::string_view s);
  ByteWriter& Zeroes(size_t n);

 private:
  uint8_t* Grow(size_t n);
  std::vector<uint8_t>* out_;
};

// Reads big-endian values from a span it does not own. Each getter returns
// nullopt, and consumes nothing, when fewer bytes remain than it needs.
class ByteReader {
 public:
  explicit ByteReader(std::span<const uint8_t> in) : in_(in) {}
  std::optional<uint16_t> U16();
  std::optional<uint32_t> U32();
  std::optional<uint64_t> U64();
  std::optional<std::string> String(size_t n);
  size_t remaining() const { return in_.size() - pos_; }

 private:
  std::span<const uint8_t> in_;
  size_t pos_ = 0;
};

// Server greeting: NBDMAGIC, IHAVEOPT, handshake flags.
std::array<uint8_t, kGreetingSize> EncodeGreeting(uint16_t handshake_flags);

// Client option header: IHAVEOPT, option, length.
struct OptionHeader {
  uint64_t magic = 0;
  uint32_t option = 0;
  uint32_t length = 0;
};
OptionHeader DecodeOptionHeader(std::span<const uint8_t, kOptionHeaderSize> in);

// Option reply header: magic, option, reply type, payload length.
std::array<uint8_t, kOptionReplyHeaderSize> EncodeOptionReplyHeader(
    uint32_t option, uint32_t reply_type, uint32_t length);

// Transmission request header. Returns InvalidArgument on a bad magic (the
// stream is then out of sync and the connection must close).
absl::StatusOr<RequestHeader> DecodeRequestHeader(
    std::span<const uint8_t, kRequestHeaderSize> in);
std::array<uint8_t, kRequestHeaderSize> EncodeRequestHeader(
    const RequestHeader& h);

// Reply headers, written into `out` (which must have room).
void EncodeSimpleReply(uint8_t* out, uint32_t error, uint64_t cookie);
void EncodeChunkHeader(uint8_t* out, uint16_t flags, uint16_t type,
                       uint64_t cookie, uint32_t length);

// Structured reply chunks: every transmission reply the server sends is
// encoded by these and EncodeSimpleReply, nowhere else. `flags` is
// kReplyFlagDone on a reply's last chunk, 0 before it.
//
// NBD_REPLY_TYPE_OFFSET_DATA up to its data: chunk header and offset; the
// `length` data bytes that follow are the caller's.
inline constexpr size_t kOffsetDataHeaderSize = kChunkHeaderSize + 8;
void EncodeOffsetDataHeader(uint8_t* out, uint16_t flags, uint64_t cookie,
                            uint64_t offset, uint32_t length);
// NBD_REPLY_TYPE_OFFSET_HOLE: `length` bytes of zeroes at `offset`.
inline constexpr size_t kOffsetHoleSize = kChunkHeaderSize + 12;
void EncodeOffsetHole(uint8_t* out, uint16_t flags, uint64_t cookie,
                      uint64_t offset, uint32_t length);
// NBD_REPLY_TYPE_ERROR (always the last chunk): error and message, the
// message as ErrorChunkMessage(message); ErrorChunkSize(message) bytes.
//
// The spec's rules for a string: UTF-8 without NUL, at most 4096 bytes
// (SHOULD 256). ErrorChunkMessage is `message` cut to kMaxErrorMessage bytes
// at a character boundary, or empty if it breaks those rules (a backend's
// message may carry a file name in any encoding).
inline constexpr size_t kMaxErrorMessage = 256;
std::string_view ErrorChunkMessage(std::string_view message);
inline size_t ErrorChunkSize(std::string_view message) {
  return kChunkHeaderSize + 6 + ErrorChunkMessage(message).size();
}
void EncodeErrorChunk(uint8_t* out, uint64_t cookie, uint32_t error,
                      std::string_view message);
// NBD_REPLY_TYPE_BLOCK_STATUS, one per selected context (`flags`
// kReplyFlagDone on the last): the context id and one descriptor per
// entry; BlockStatusChunkSize(n) bytes.
struct BlockDescriptor {
  uint32_t length;
  // kStateHole | kStateZero for base:allocation, kStateDirty for
  // qemu:dirty-bitmap:NAME.
  uint32_t flags;
};
inline size_t BlockStatusChunkSize(size_t descriptors) {
  return kChunkHeaderSize + 4 + 8 * descriptors;
}
void EncodeBlockStatusChunk(uint8_t* out, uint16_t flags, uint64_t cookie,
                            uint32_t context_id,
                            std::span<const BlockDescriptor> descriptors);

// NBD_OPT_INFO / NBD_OPT_GO payload: u32 name length, name, u16 count,
// count x u16 info types. InvalidArgument if lengths disagree with the
// payload size or the name is longer than kMaxStringLength.
// The requested types are kept as a set of the known ones (kInfoExport ..
// kInfoBlockSize): a type asked for many times is one member, and unknown
// types are dropped (the spec says to ignore them), so the result's size
// does not depend on the client's count.
inline constexpr size_t kInfoTypeCount = kInfoBlockSize + 1;
struct InfoRequest {
  std::string name;
  std::bitset<kInfoTypeCount> requested;
  // Whether the client asked for `type` (false for unknown types).
  bool Requested(uint16_t type) const {
    return type < kInfoTypeCount && requested.test(type);
  }
};
absl::StatusOr<InfoRequest> ParseInfoRequest(std::span<const uint8_t> payload);

// NBD_OPT_{LIST,SET}_META_CONTEXT payload: u32 name length, name, u32 query
// count, each query u32 length + string. InvalidArgument on any mismatch
// (including a query longer than kMaxStringLength).
// The queries are validated but not copied: `queries` views the parsed
// payload, which must outlive the request. Holding them as strings would
// cost up to 8 times the payload (a 4-byte empty query becomes a 32-byte
// std::string).
struct MetaContextRequest {
  std::string export_name;
  uint32_t query_count = 0;
  // query_count x (u32 length, bytes), exactly as sent.
  std::span<const uint8_t> queries;
};
absl::StatusOr<MetaContextRequest> ParseMetaContextRequest(
    std::span<const uint8_t> payload);
// Calls `fn` with each query of a request ParseMetaContextRequest returned,
// in order. The views live as long as the request's payload.
void ForEachQuery(const MetaContextRequest& req,
                  absl::FunctionRef<void(std::string_view)> fn);

// Option reply payloads.
std::vector<uint8_t> EncodeInfoExport(uint64_t size, uint16_t tx_flags);
std::vector<uint8_t> EncodeInfoString(uint16_t info_type, std::string_view s);
std::vector<uint8_t> EncodeInfoBlockSize(uint32_t minimum, uint32_t preferred,
                                         uint32_t maximum);
std::vector<uint8_t> EncodeServerReply(std::string_view name,
                                       std::string_view description);
std::vector<uint8_t> EncodeMetaContextReply(uint32_t id, std::string_view name);
// Reply to NBD_OPT_EXPORT_NAME: size, flags and (unless no_zeroes) 124 zeroes.
std::vector<uint8_t> EncodeExportNameReply(uint64_t size, uint16_t tx_flags,
                                           bool no_zeroes);

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_CODEC_H_
