#include "lib/nbd/wire.h"

namespace nbdmgr::nbd {

std::string_view NameOfOption(uint32_t option) {
  switch (option) {
    case kOptExportName:
      return "EXPORT_NAME";
    case kOptAbort:
      return "ABORT";
    case kOptList:
      return "LIST";
    case kOptPeekExport:
      return "PEEK_EXPORT";
    case kOptStartTls:
      return "STARTTLS";
    case kOptInfo:
      return "INFO";
    case kOptGo:
      return "GO";
    case kOptStructuredReply:
      return "STRUCTURED_REPLY";
    case kOptListMetaContext:
      return "LIST_META_CONTEXT";
    case kOptSetMetaContext:
      return "SET_META_CONTEXT";
    case kOptExtendedHeaders:
      return "EXTENDED_HEADERS";
  }
  return "unknown";
}

std::string_view NameOfOptionReply(uint32_t reply) {
  switch (reply) {
    case kRepAck:
      return "ACK";
    case kRepServer:
      return "SERVER";
    case kRepInfo:
      return "INFO";
    case kRepMetaContext:
      return "META_CONTEXT";
    case kRepErrUnsup:
      return "ERR_UNSUP";
    case kRepErrPolicy:
      return "ERR_POLICY";
    case kRepErrInvalid:
      return "ERR_INVALID";
    case kRepErrPlatform:
      return "ERR_PLATFORM";
    case kRepErrTlsReqd:
      return "ERR_TLS_REQD";
    case kRepErrUnknown:
      return "ERR_UNKNOWN";
    case kRepErrShutdown:
      return "ERR_SHUTDOWN";
    case kRepErrBlockSizeReqd:
      return "ERR_BLOCK_SIZE_REQD";
    case kRepErrTooBig:
      return "ERR_TOO_BIG";
    case kRepErrExtHeaderReqd:
      return "ERR_EXT_HEADER_REQD";
  }
  return "unknown";
}

std::string_view NameOfCommand(uint16_t command) {
  switch (command) {
    case kCmdRead:
      return "READ";
    case kCmdWrite:
      return "WRITE";
    case kCmdDisc:
      return "DISC";
    case kCmdFlush:
      return "FLUSH";
    case kCmdTrim:
      return "TRIM";
    case kCmdCache:
      return "CACHE";
    case kCmdWriteZeroes:
      return "WRITE_ZEROES";
    case kCmdBlockStatus:
      return "BLOCK_STATUS";
    case kCmdResize:
      return "RESIZE";
  }
  return "unknown";
}

std::string_view NameOfError(uint32_t error) {
  switch (error) {
    case kOk:
      return "OK";
    case kEperm:
      return "EPERM";
    case kEio:
      return "EIO";
    case kEnomem:
      return "ENOMEM";
    case kEinval:
      return "EINVAL";
    case kEnospc:
      return "ENOSPC";
    case kEoverflow:
      return "EOVERFLOW";
    case kEnotsup:
      return "ENOTSUP";
    case kEshutdown:
      return "ESHUTDOWN";
  }
  return "unknown";
}

}  // namespace nbdmgr::nbd
