#ifndef NBDMGR_LIB_NBD_WIRE_H_
#define NBDMGR_LIB_NBD_WIRE_H_

// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md).
// Only numbers and plain structs live here; encoding is in codec.h.

#include <cstdint>
#include <string_view>

namespace nbdmgr::nbd {

// Magic numbers.
inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943ull;  // "NBDMAGIC"
inline constexpr uint64_t kIHaveOpt = 0x49484156454f5054ull;  // "IHAVEOPT"
inline constexpr uint64_t kOptionReplyMagic = 0x0003e889045565a9ull;
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;

// Handshake flags (server, u16) and client flags (u32).
inline constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
inline constexpr uint16_t kFlagNoZeroes = 1 << 1;
inline constexpr uint32_t kClientFlagFixedNewstyle = 1 << 0;
inline constexpr uint32_t kClientFlagNoZeroes = 1 << 1;

// Options.
enum Option : uint32_t {
  kOptExportName = 1,
  kOptAbort = 2,
  kOptList = 3,
  kOptPeekExport = 4,
  kOptStartTls = 5,
  kOptInfo = 6,
  kOptGo = 7,
  kOptStructuredReply = 8,
  kOptListMetaContext = 9,
  kOptSetMetaContext = 10,
  kOptExtendedHeaders = 11,
};

// Option reply types; errors have bit 31 set.
inline constexpr uint32_t kRepErrorBit = 1u << 31;
enum OptionReply : uint32_t {
  kRepAck = 1,
  kRepServer = 2,
  kRepInfo = 3,
  kRepMetaContext = 4,
  kRepErrUnsup = kRepErrorBit + 1,
  kRepErrPolicy = kRepErrorBit + 2,
  kRepErrInvalid = kRepErrorBit + 3,
  kRepErrPlatform = kRepErrorBit + 4,
  kRepErrTlsReqd = kRepErrorBit + 5,
  kRepErrUnknown = kRepErrorBit + 6,
  kRepErrShutdown = kRepErrorBit + 7,
  kRepErrBlockSizeReqd = kRepErrorBit + 8,
  kRepErrTooBig = kRepErrorBit + 9,
  kRepErrExtHeaderReqd = kRepErrorBit + 10,
};

// NBD_INFO_* types sent in NBD_REP_INFO.
enum InfoType : uint16_t {
  kInfoExport = 0,
  kInfoName = 1,
  kInfoDescription = 2,
  kInfoBlockSize = 3,
};

// Transmission flags (u16, per export).
inline constexpr uint16_t kTxHasFlags = 1 << 0;
inline constexpr uint16_t kTxReadOnly = 1 << 1;
inline constexpr uint16_t kTxSendFlush = 1 << 2;
inline constexpr uint16_t kTxSendFua = 1 << 3;
inline constexpr uint16_t kTxRotational = 1 << 4;
inline constexpr uint16_t kTxSendTrim = 1 << 5;
inline constexpr uint16_t kTxSendWriteZeroes = 1 << 6;
inline constexpr uint16_t kTxSendDf = 1 << 7;
inline constexpr uint16_t kTxCanMultiConn = 1 << 8;
inline constexpr uint16_t kTxSendResize = 1 << 9;
inline constexpr uint16_t kTxSendCache = 1 << 10;
inline constexpr uint16_t kTxSendFastZero = 1 << 11;

// Commands.
enum Command : uint16_t {
  kCmdRead = 0,
  kCmdWrite = 1,
  kCmdDisc = 2,
  kCmdFlush = 3,
  kCmdTrim = 4,
  kCmdCache = 5,
  kCmdWriteZeroes = 6,
  kCmdBlockStatus = 7,
  kCmdResize = 8,
};

// Command flags.
inline constexpr uint16_t kCmdFlagFua = 1 << 0;
inline constexpr uint16_t kCmdFlagNoHole = 1 << 1;
inline constexpr uint16_t kCmdFlagDf = 1 << 2;
inline constexpr uint16_t kCmdFlagReqOne = 1 << 3;
inline constexpr uint16_t kCmdFlagFastZero = 1 << 4;
inline constexpr uint16_t kCmdFlagPayloadLen = 1 << 5;

// Structured reply flags and chunk types.
inline constexpr uint16_t kReplyFlagDone = 1 << 0;
enum ChunkType : uint16_t {
  kChunkNone = 0,
  kChunkOffsetData = 1,
  kChunkOffsetHole = 2,
  kChunkBlockStatus = 5,
  kChunkError = 32769,
  kChunkErrorOffset = 32770,
};

// base:allocation status flags.
inline constexpr uint32_t kStateHole = 1 << 0;
inline constexpr uint32_t kStateZero = 1 << 1;
// qemu:dirty-bitmap:NAME: the block changed (is dirty in the bitmap).
inline constexpr uint32_t kStateDirty = 1 << 0;

// Error values carried in replies.
enum Error : uint32_t {
  kOk = 0,
  kEperm = 1,
  kEio = 5,
  kEnomem = 12,
  kEinval = 22,
  kEnospc = 28,
  kEoverflow = 75,
  kEnotsup = 95,
  kEshutdown = 108,
};

// Sizes of fixed wire structures, in bytes.
inline constexpr size_t kGreetingSize = 18;      // magic, IHAVEOPT, flags
inline constexpr size_t kOptionHeaderSize = 16;  // IHAVEOPT, option, length
inline constexpr size_t kOptionReplyHeaderSize = 20;
inline constexpr size_t kRequestHeaderSize = 28;
inline constexpr size_t kSimpleReplySize = 16;
inline constexpr size_t kChunkHeaderSize = 20;
inline constexpr size_t kExportNameZeroes = 124;

// Protocol limits.
inline constexpr size_t kMaxStringLength = 4096;  // names, queries
inline constexpr char kBaseAllocation[] = "base:allocation";

// A decoded transmission request (compact header).
struct RequestHeader {
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t cookie = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};

// Names for logs. Unknown values come back as "unknown".
std::string_view NameOfOption(uint32_t option);
std::string_view NameOfOptionReply(uint32_t reply);
std::string_view NameOfCommand(uint16_t command);
std::string_view NameOfError(uint32_t error);

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_WIRE_H_
