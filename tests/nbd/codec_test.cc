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

TEST(CodecTest, ReplyChunks) {
  uint8_t hole[kOffsetHoleSize];
  EncodeOffsetHole(hole, kReplyFlagDone, 7, 4096, 512);
  EXPECT_EQ(GetU16(hole + 4), kReplyFlagDone);
  EXPECT_EQ(GetU16(hole + 6), kChunkOffsetHole);
  EXPECT_EQ(GetU32(hole + 16), 12u);
  EXPECT_EQ(GetU64(hole + 20), 4096u);
  EXPECT_EQ(GetU32(hole + 28), 512u);

  uint8_t data[kOffsetDataHeaderSize];
  EncodeOffsetDataHeader(data, 0, 7, 8192, 1000);
  EXPECT_EQ(GetU16(data + 6), kChunkOffsetData);
  EXPECT_EQ(GetU32(data + 16), 1008u);  // offset + the data that follows
  EXPECT_EQ(GetU64(data + 20), 8192u);

  const BlockDescriptor descs[] = {{4096, kStateHole | kStateZero}, {512, 0}};
  std::vector<uint8_t> bs(BlockStatusChunkSize(2));
  EncodeBlockStatusChunk(bs.data(), kReplyFlagDone, 7, 1, descs);
  EXPECT_EQ(GetU16(bs.data() + 6), kChunkBlockStatus);
  EXPECT_EQ(GetU32(bs.data() + 16), 4u + 16u);
  EXPECT_EQ(GetU32(bs.data() + 20), 1u);
  EXPECT_EQ(GetU32(bs.data() + 24), 4096u);
  EXPECT_EQ(GetU32(bs.data() + 28), kStateHole | kStateZero);
  EXPECT_EQ(GetU32(bs.data() + 32), 512u);
  EXPECT_EQ(GetU32(bs.data() + 36), 0u);
}

TEST(CodecTest, ErrorChunkMessageFollowsTheSpecsStringRules) {
  std::vector<uint8_t> e(ErrorChunkSize("no space"));
  EncodeErrorChunk(e.data(), 7, kEnospc, "no space");
  EXPECT_EQ(GetU16(e.data() + 4), kReplyFlagDone);
  EXPECT_EQ(GetU16(e.data() + 6), kChunkError);
  EXPECT_EQ(GetU32(e.data() + 16), 6u + 8u);
  EXPECT_EQ(GetU32(e.data() + 20), kEnospc);
  EXPECT_EQ(GetU16(e.data() + 24), 8u);
  EXPECT_EQ(std::string(e.begin() + 26, e.end()), "no space");
  // Cut to kMaxErrorMessage bytes, never inside a character.
  std::string long_msg(kMaxErrorMessage - 1, 'a');
  long_msg += "\xc3\xa9tail";  // U+00E9 straddles the limit
  EXPECT_EQ(ErrorChunkMessage(long_msg).size(), kMaxErrorMessage - 1);
  // Not UTF-8, or a NUL: no message rather than a broken string.
  EXPECT_EQ(ErrorChunkMessage("read /srv/\xff.img: EIO"), "");
  EXPECT_EQ(ErrorChunkMessage(std::string_view("a\0b", 3)), "");
  EXPECT_EQ(ErrorChunkSize("\xff"), kChunkHeaderSize + 6);
}

TEST(CodecTest, InfoRequestParses) {
  auto p = Cat({U32(4), Str("disk"), {0, 2, 0, 1, 0, 3}});
  auto r = ParseInfoRequest(p);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->name, "disk");
  EXPECT_FALSE(r->Requested(kInfoExport));
  EXPECT_TRUE(r->Requested(kInfoName));
  EXPECT_FALSE(r->Requested(kInfoDescription));
  EXPECT_TRUE(r->Requested(kInfoBlockSize));
}

TEST(CodecTest, InfoRequestIsASetOfKnownTypes) {
  // 30,000 requests: DESCRIPTION over and over, unknown types, NAME once.
  std::vector<uint8_t> p = Cat({U32(0), {0x75, 0x30}});
  for (int i = 0; i < 30000; ++i) {
    uint16_t type = i == 7 ? kInfoName : i % 2 ? 0xffff : kInfoDescription;
    p.push_back(static_cast<uint8_t>(type >> 8));
    p.push_back(static_cast<uint8_t>(type));
  }
  auto r = ParseInfoRequest(p);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->requested.count(), 2u);
  EXPECT_TRUE(r->Requested(kInfoName));
  EXPECT_TRUE(r->Requested(kInfoDescription));
  EXPECT_FALSE(r->Requested(0xffff));
  EXPECT_FALSE(r->Requested(4));
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
  EXPECT_EQ(r->query_count, 2u);
  std::vector<std::string> queries;
  ForEachQuery(*r, [&](std::string_view q) { queries.emplace_back(q); });
  EXPECT_EQ(queries, (std::vector<std::string>{"base:allocation", "base:"}));
}

TEST(CodecTest, MetaContextRequestQueriesViewThePayload) {
  // Empty queries, 4 bytes each: nothing per query is allocated, the
  // views point into the payload.
  std::vector<uint8_t> p = Cat({U32(0), U32(1001)});
  p.resize(p.size() + 4 * 1000, 0);
  p = Cat({p, U32(3), Str("abc")});
  auto r = ParseMetaContextRequest(p);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->query_count, 1001u);
  EXPECT_EQ(r->queries.data(), p.data() + 8);
  int n = 0;
  std::string_view last;
  ForEachQuery(*r, [&](std::string_view q) {
    ++n;
    last = q;
  });
  EXPECT_EQ(n, 1001);
  EXPECT_EQ(last, "abc");
  EXPECT_EQ(static_cast<const void*>(last.data()),
            static_cast<const void*>(p.data() + p.size() - 3));
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
  EXPECT_FALSE(ParseMetaContextRequest(Cat({U32(0), U32(1), U32(5000),
                                            std::vector<uint8_t>(5000, 'a')}))
                   .ok());  // query > 4096
  EXPECT_FALSE(ParseMetaContextRequest(Cat({U32(0), U32(1), U32(1), Str("ab")}))
                   .ok());  // trailing byte
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
