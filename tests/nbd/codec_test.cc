#include "lib/nbd/codec.h"

#include <gtest/gtest.h>

#include "tests/nbd/harness.h"

namespace nbdmgr::nbd {
namespace {

using testing::Cat;
using testing::Str;
using testing::U32;

TEST(CodecTest, GreetingBytes) {
  auto g = EncodeGreeting(kFlagFixedNewstyle | kFlagNoZeroes);
  std::vector<uint8_t> want = {'N', 'B', 'D', 'M', 'A', 'G', 'I', 'C', 'I',
                               'H', 'A', 'V', 'E', 'O', 'P', 'T', 0,   3};
  EXPECT_EQ(std::vector<uint8_t>(g.begin(), g.end()), want);
}

TEST(CodecTest, RequestHeaderRoundTrip) {
  RequestHeader h{kCmdFlagFua, kCmdWrite, 0x1122334455667788ull, 1ull << 40,
                  65536};
  auto raw = EncodeRequestHeader(h);
  EXPECT_EQ(GetU32(raw.data()), kRequestMagic);
  auto d = DecodeRequestHeader(raw);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->flags, h.flags);
  EXPECT_EQ(d->type, h.type);
  EXPECT_EQ(d->cookie, h.cookie);
  EXPECT_EQ(d->offset, h.offset);
  EXPECT_EQ(d->length, h.length);
}

TEST(CodecTest, RequestHeaderBadMagic) {
  auto raw = EncodeRequestHeader(RequestHeader{});
  raw[0] ^= 0xff;
  EXPECT_FALSE(DecodeRequestHeader(raw).ok());
}

TEST(CodecTest, SimpleReplyAndChunkHeader) {
  uint8_t b[20];
  EncodeSimpleReply(b, kEinval, 42);
  EXPECT_EQ(GetU32(b), kSimpleReplyMagic);
  EXPECT_EQ(GetU32(b + 4), 22u);
  EXPECT_EQ(GetU64(b + 8), 42u);
  EncodeChunkHeader(b, kReplyFlagDone, kChunkOffsetData, 7, 108);
  EXPECT_EQ(GetU32(b), kStructuredReplyMagic);
  EXPECT_EQ(GetU16(b + 4), 1);
  EXPECT_EQ(GetU16(b + 6), 1);
  EXPECT_EQ(GetU64(b + 8), 7u);
  EXPECT_EQ(GetU32(b + 16), 108u);
}

TEST(CodecTest, InfoRequestParses) {
  auto p = Cat({U32(4), Str("disk"), {0, 2, 0, 1, 0, 3}});
  auto r = ParseInfoRequest(p);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->name, "disk");
  EXPECT_EQ(r->info_types, (std::vector<uint16_t>{1, 3}));
}

TEST(CodecTest, InfoRequestRejectsMalformed) {
  EXPECT_FALSE(ParseInfoRequest({}).ok());  // empty
  EXPECT_FALSE(
      ParseInfoRequest(Cat({U32(10), Str("abc")})).ok());  // name past end
  EXPECT_FALSE(ParseInfoRequest(Cat({U32(0)})).ok());      // no count
  EXPECT_FALSE(
      ParseInfoRequest(Cat({U32(0), {0, 2, 0, 1}})).ok());  // count too big
  EXPECT_FALSE(ParseInfoRequest(Cat({U32(0), {0, 0, 9}})).ok());  // trailing
  EXPECT_FALSE(ParseInfoRequest(
                   Cat({U32(5000), std::vector<uint8_t>(5000, 'a'), {0, 0}}))
                   .ok());  // > 4096
}

TEST(CodecTest, MetaContextRequestParses) {
  auto p = Cat({U32(3), Str("mem"), U32(2), U32(15), Str("base:allocation"),
                U32(5), Str("base:")});
  auto r = ParseMetaContextRequest(p);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->export_name, "mem");
  EXPECT_EQ(r->queries, (std::vector<std::string>{"base:allocation", "base:"}));
}

TEST(CodecTest, MetaContextRequestHugeCountDoesNotAllocate) {
  // A count of 4 billion queries in a 12-byte payload must be refused
  // before anything is reserved for it.
  auto r = ParseMetaContextRequest(Cat({U32(0), U32(0xffffffff), U32(1)}));
  EXPECT_FALSE(r.ok());
}

TEST(CodecTest, MetaContextRequestRejectsMalformed) {
  EXPECT_FALSE(
      ParseMetaContextRequest(Cat({U32(0), U32(1), U32(9), Str("ab")})).ok());
  EXPECT_FALSE(ParseMetaContextRequest(Cat({U32(0), U32(0), U32(0)})).ok());
  EXPECT_FALSE(ParseMetaContextRequest(Cat({U32(2), Str("a")})).ok());
}

TEST(CodecTest, ExportNameReplyZeroes) {
  EXPECT_EQ(EncodeExportNameReply(1, 1, false).size(), 8u + 2 + 124);
  EXPECT_EQ(EncodeExportNameReply(1, 1, true).size(), 10u);
}

TEST(CodecTest, ServerReplyCarriesDescription) {
  auto b = EncodeServerReply("disk", "my disk");
  EXPECT_EQ(GetU32(b.data()), 4u);
  EXPECT_EQ(std::string(b.begin() + 4, b.end()), "diskmy disk");
}

TEST(WireTest, NamesForLogs) {
  EXPECT_EQ(NameOfCommand(kCmdBlockStatus), "BLOCK_STATUS");
  EXPECT_EQ(NameOfOption(kOptGo), "GO");
  EXPECT_EQ(NameOfOptionReply(kRepErrUnknown), "ERR_UNKNOWN");
  EXPECT_EQ(NameOfError(kEnospc), "ENOSPC");
  EXPECT_EQ(NameOfCommand(999), "unknown");
}

}  // namespace
}  // namespace nbdmgr::nbd
