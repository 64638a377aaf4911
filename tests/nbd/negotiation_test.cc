// Negotiation fed raw bytes: a real Session on one end of a socketpair.

#include "lib/nbd/negotiation.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

#include "tests/nbd/harness.h"

namespace nbdmgr::nbd {
namespace {

using testing::Cat;
using testing::Str;
using testing::U32;

std::vector<uint8_t> InfoPayload(std::string_view name,
                                 std::vector<uint16_t> infos = {}) {
  std::vector<uint8_t> p =
      Cat({U32(static_cast<uint32_t>(name.size())), Str(name)});
  p.push_back(static_cast<uint8_t>(infos.size() >> 8));
  p.push_back(static_cast<uint8_t>(infos.size()));
  for (uint16_t i : infos) {
    p.push_back(static_cast<uint8_t>(i >> 8));
    p.push_back(static_cast<uint8_t>(i));
  }
  return p;
}

// `n` copies of each of `types`, interleaved.
std::vector<uint16_t> Repeated(std::vector<uint16_t> types, int n) {
  std::vector<uint16_t> out;
  for (int i = 0; i < n; ++i) out.insert(out.end(), types.begin(), types.end());
  return out;
}

// META_CONTEXT payload for export `name` with `queries`.
std::vector<uint8_t> MetaPayload(std::string_view name,
                                 const std::vector<std::string>& queries) {
  std::vector<uint8_t> p =
      Cat({U32(static_cast<uint32_t>(name.size())), Str(name),
           U32(static_cast<uint32_t>(queries.size()))});
  for (const std::string& q : queries) {
    std::vector<uint8_t> one =
        Cat({U32(static_cast<uint32_t>(q.size())), Str(q)});
    p.insert(p.end(), one.begin(), one.end());
  }
  return p;
}

class NegotiationTest : public testing::SessionFixture {
 protected:
  void SetUp() override { StartSession(); }

  // Reads INFO replies up to the ACK; returns how many came of each info
  // type (fails the test on any other reply).
  std::map<uint16_t, int> CountInfoReplies(uint32_t option) {
    std::map<uint16_t, int> seen;
    for (;;) {
      auto r = peer().ReadOptReply();
      EXPECT_EQ(r.option, option);
      if (r.type == kRepAck) break;
      EXPECT_EQ(r.type, kRepInfo);
      if (r.type != kRepInfo || r.data.size() < 2) break;
      ++seen[GetU16(r.data.data())];
    }
    return seen;
  }
};

TEST_F(NegotiationTest, GreetingAdvertisesFixedNewstyleAndNoZeroes) {
  auto g = peer().Read(kGreetingSize);
  ASSERT_TRUE(g.has_value());
  EXPECT_EQ(GetU16(g->data() + 16), kFlagFixedNewstyle | kFlagNoZeroes);
}

TEST_F(NegotiationTest, UnknownClientFlagsCloseConnection) {
  peer().Hello(kClientFlagFixedNewstyle | 0x80);
  EXPECT_TRUE(peer().SeesEof());
  EXPECT_TRUE(SessionEnds());
}

TEST_F(NegotiationTest, ListSendsNameAndDescription) {
  peer().Hello();
  peer().SendOption(kOptList, {});
  auto r = peer().ReadOptReply();
  ASSERT_EQ(r.type, kRepServer);
  ASSERT_GE(r.data.size(), 4u);
  EXPECT_EQ(GetU32(r.data.data()), 3u);
  EXPECT_EQ(std::string(r.data.begin() + 4, r.data.end()), "memtest disk");
  EXPECT_EQ(peer().ReadOptReply().type, kRepAck);
}

TEST_F(NegotiationTest, ListWithDataIsInvalidAndNegotiationContinues) {
  peer().Hello();
  peer().SendOption(kOptList, {1, 2, 3});
  EXPECT_EQ(peer().ReadOptReply().type, kRepErrInvalid);
  peer().SendOption(kOptList, {});
  EXPECT_EQ(peer().ReadOptReply().type, kRepServer);
  EXPECT_EQ(peer().ReadOptReply().type, kRepAck);
}

TEST_F(NegotiationTest, UnknownOptionIsUnsupportedAndNegotiationContinues) {
  peer().Hello();
  peer().SendOption(99, {1, 2, 3, 4});
  auto r = peer().ReadOptReply();
  EXPECT_EQ(r.option, 99u);
  EXPECT_EQ(r.type, kRepErrUnsup);
  peer().SendOption(kOptStartTls, {});
  EXPECT_EQ(peer().ReadOptReply().type, kRepErrUnsup);
  peer().SendOption(kOptExtendedHeaders, {});
  EXPECT_EQ(peer().ReadOptReply().type, kRepErrUnsup);
  peer().SendOption(kOptAbort, {});
  EXPECT_EQ(peer().ReadOptReply().type, kRepAck);
  EXPECT_TRUE(peer().SeesEof());
}

TEST_F(NegotiationTest, InfoReportsExportAndStaysInNegotiation) {
  peer().Hello();
  peer().SendOption(kOptInfo,
                    InfoPayload("mem", {kInfoName, kInfoDescription}));
  bool saw_export = false, saw_name = false, saw_desc = false, saw_bs = false;
  for (;;) {
    auto r = peer().ReadOptReply();
    if (r.type == kRepAck) break;
    ASSERT_EQ(r.type, kRepInfo);
    ASSERT_GE(r.data.size(), 2u);
    uint16_t type = GetU16(r.data.data());
    if (type == kInfoExport) {
      saw_export = true;
      ASSERT_EQ(r.data.size(), 12u);
      EXPECT_EQ(GetU64(r.data.data() + 2), kSize);
      uint16_t flags = GetU16(r.data.data() + 10);
      EXPECT_TRUE(flags & kTxHasFlags);
      EXPECT_TRUE(flags & kTxSendFlush);
      EXPECT_TRUE(flags & kTxSendTrim);
      EXPECT_TRUE(flags & kTxCanMultiConn);
      EXPECT_FALSE(flags & kTxReadOnly);
      EXPECT_FALSE(flags & kTxSendDf);  // no structured replies yet
    } else if (type == kInfoName) {
      saw_name = std::string(r.data.begin() + 2, r.data.end()) == "mem";
    } else if (type == kInfoDescription) {
      saw_desc = std::string(r.data.begin() + 2, r.data.end()) == "test disk";
    } else if (type == kInfoBlockSize) {
      ASSERT_EQ(r.data.size(), 14u);
      EXPECT_EQ(GetU32(r.data.data() + 2), 1u);
      EXPECT_EQ(GetU32(r.data.data() + 6), 4096u);
      EXPECT_EQ(GetU32(r.data.data() + 10), 32u << 20);
      saw_bs = true;
    }
  }
  EXPECT_TRUE(saw_export && saw_name && saw_desc && saw_bs);
  // Still negotiating: another option works.
  peer().SendOption(kOptList, {});
  EXPECT_EQ(peer().ReadOptReply().type, kRepServer);
}

TEST_F(NegotiationTest, InfoAnswersEachRepeatedTypeOnce) {
  peer().Hello();
  // 1000 x NAME, 1000 x DESCRIPTION and 1000 x an unknown type.
  peer().SendOption(
      kOptInfo,
      InfoPayload("mem", Repeated({kInfoDescription, kInfoName, 77}, 1000)));
  std::map<uint16_t, int> seen = CountInfoReplies(kOptInfo);
  EXPECT_EQ(seen, (std::map<uint16_t, int>{{kInfoExport, 1},
                                           {kInfoName, 1},
                                           {kInfoDescription, 1},
                                           {kInfoBlockSize, 1}}));
  // The stream is in sync and negotiation goes on.
  peer().SendOption(kOptList, {});
  EXPECT_EQ(peer().ReadOptReply().type, kRepServer);
  EXPECT_EQ(peer().ReadOptReply().type, kRepAck);
}

TEST_F(NegotiationTest, GoAnswersEachRepeatedTypeOnceAndEntersTransmission) {
  peer().Hello();
  // Repeated EXPORT and BLOCK_SIZE requests add no replies either.
  peer().SendOption(kOptGo,
                    InfoPayload("mem", Repeated({kInfoDescription, kInfoExport,
                                                 kInfoBlockSize, kInfoName},
                                                1000)));
  std::map<uint16_t, int> seen = CountInfoReplies(kOptGo);
  EXPECT_EQ(seen, (std::map<uint16_t, int>{{kInfoExport, 1},
                                           {kInfoName, 1},
                                           {kInfoDescription, 1},
                                           {kInfoBlockSize, 1}}));
  peer().SendRequest(kCmdFlush, 5, 0, 0);
  auto reply = peer().ReadSimpleReply();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->first, kOk);
  EXPECT_EQ(reply->second, 5u);
}

TEST_F(NegotiationTest, InfoLargestRepeatCountIsAnsweredOnce) {
  // As many requests as the 64 KiB option limit allows.
  const int n = (NegotiationOptions{}.max_option_length - 4 - 3 - 2) / 2;
  peer().Hello();
  peer().SendOption(kOptInfo,
                    InfoPayload("mem", Repeated({kInfoDescription}, n)));
  std::map<uint16_t, int> seen = CountInfoReplies(kOptInfo);
  EXPECT_EQ(seen[kInfoDescription], 1);
  EXPECT_EQ(seen.size(), 3u);  // EXPORT, BLOCK_SIZE, DESCRIPTION
  peer().SendOption(kOptStructuredReply, {});
  EXPECT_EQ(peer().ReadOptReply().type, kRepAck);
}

TEST_F(NegotiationTest, SetMetaContextDuplicateQueriesGetOneReply) {
  peer().Hello();
  peer().SendOption(kOptStructuredReply, {});
  ASSERT_EQ(peer().ReadOptReply().type, kRepAck);
  std::vector<std::string> queries(1000, "base:allocation");
  queries.push_back("qemu:dirty-bitmap:x");
  peer().SendOption(kOptSetMetaContext, MetaPayload("mem", queries));
  auto r = peer().ReadOptReply();
  ASSERT_EQ(r.type, kRepMetaContext);
  EXPECT_EQ(GetU32(r.data.data()), kBaseAllocationId);
  EXPECT_EQ(std::string(r.data.begin() + 4, r.data.end()), "base:allocation");
  EXPECT_EQ(peer().ReadOptReply().type, kRepAck);
  // LIST too: base: and base:allocation, repeated, name one context.
  std::vector<std::string> list_queries;
  for (int i = 0; i < 1000; ++i) {
    list_queries.push_back("base:");
    list_queries.push_back("base:allocation");
  }
  peer().SendOption(kOptListMetaContext, MetaPayload("mem", list_queries));
  EXPECT_EQ(peer().ReadOptReply().type, kRepMetaContext);
  EXPECT_EQ(peer().ReadOptReply().type, kRepAck);
  // Empty queries, as many as fit: no reply but the ACK.
  peer().SendOption(kOptListMetaContext,
                    MetaPayload("mem", std::vector<std::string>(16000, "")));
  EXPECT_EQ(peer().ReadOptReply().type, kRepAck);
  // Still negotiating, and the selected context survives into GO.
  peer().SendOption(kOptGo, InfoPayload("mem"));
  CountInfoReplies(kOptGo);
  peer().SendRequest(kCmdBlockStatus, 9, 0, 4096);
  auto chunk = peer().ReadChunk();
  ASSERT_TRUE(chunk.has_value());
  EXPECT_EQ(chunk->type, kChunkBlockStatus);
  EXPECT_EQ(chunk->cookie, 9u);
}

// Reads META_CONTEXT replies up to the ACK: name -> id.
std::map<std::string, uint32_t> ReadContexts(testing::RawPeer& peer) {
  std::map<std::string, uint32_t> got;
  for (;;) {
    auto r = peer.ReadOptReply();
    if (r.type != kRepMetaContext || r.data.size() < 4) {
      EXPECT_EQ(r.type, kRepAck);
      return got;
    }
    std::string name(r.data.begin() + 4, r.data.end());
    EXPECT_FALSE(got.contains(name)) << name << " answered twice";
    got[name] = GetU32(r.data.data());
  }
}

TEST_F(NegotiationTest, DirtyBitmapContextsAreListedSelectedAndReported) {
  ASSERT_TRUE(export_->bitmaps().Add("daily", 65536).ok());
  ASSERT_TRUE(export_->bitmaps().Add("weekly", 1 << 20).ok());
  // An inconsistent bitmap (as after a crash) is never offered.
  std::vector<BitmapRecord> records = export_->bitmaps().Records();
  BitmapRecord broken;
  broken.name = "crashed";
  broken.granularity = 65536;
  broken.consistent = false;
  records.push_back(broken);
  export_->bitmaps().Restore(records);
  peer().Hello();
  peer().SendOption(kOptStructuredReply, {});
  ASSERT_EQ(peer().ReadOptReply().type, kRepAck);

  // LIST without queries: everything served; "qemu:" the bitmaps only.
  peer().SendOption(kOptListMetaContext, MetaPayload("mem", {}));
  using Ids = std::map<std::string, uint32_t>;
  EXPECT_EQ(ReadContexts(peer()), (Ids{{"base:allocation", 0},
                                       {"qemu:dirty-bitmap:daily", 0},
                                       {"qemu:dirty-bitmap:weekly", 0}}));
  peer().SendOption(kOptListMetaContext,
                    MetaPayload("mem", {"qemu:", "qemu:dirty-bitmap:"}));
  EXPECT_EQ(ReadContexts(peer()), (Ids{{"qemu:dirty-bitmap:daily", 0},
                                       {"qemu:dirty-bitmap:weekly", 0}}));
  // SET takes whole names only; duplicates answered once; unknown and
  // inconsistent bitmaps and wildcards select nothing.
  std::vector<std::string> set(500, "qemu:dirty-bitmap:weekly");
  set.push_back("qemu:dirty-bitmap:crashed");
  set.push_back("qemu:dirty-bitmap:nope");
  set.push_back("qemu:");
  set.push_back("base:allocation");
  peer().SendOption(kOptSetMetaContext, MetaPayload("mem", set));
  Ids ids = ReadContexts(peer());
  ASSERT_EQ(ids.size(), 2u);
  ASSERT_TRUE(ids.contains("base:allocation"));
  ASSERT_TRUE(ids.contains("qemu:dirty-bitmap:weekly"));
  EXPECT_NE(ids["base:allocation"], ids["qemu:dirty-bitmap:weekly"]);

  peer().SendOption(kOptGo, InfoPayload("mem"));
  CountInfoReplies(kOptGo);
  // A write into the third MiB: dirty there in "weekly" (1 MiB blocks).
  peer().SendRequest(kCmdWrite, 1, (2 << 20) + 100, 512, 0,
                     std::vector<uint8_t>(512, 0xab));
  ASSERT_EQ(peer().ReadSimpleReply()->first, kOk);
  peer().SendRequest(kCmdBlockStatus, 2, 0, 4 << 20);
  std::map<uint32_t, std::vector<std::pair<uint32_t, uint32_t>>> chunks;
  for (int i = 0; i < 2; ++i) {
    auto c = peer().ReadChunk();
    ASSERT_TRUE(c.has_value());
    ASSERT_EQ(c->type, kChunkBlockStatus);
    EXPECT_EQ((c->flags & kReplyFlagDone) != 0, i == 1);
    uint32_t id = GetU32(c->payload.data());
    for (size_t p = 4; p + 8 <= c->payload.size(); p += 8) {
      chunks[id].emplace_back(GetU32(c->payload.data() + p),
                              GetU32(c->payload.data() + p + 4));
    }
  }
  using Runs = std::vector<std::pair<uint32_t, uint32_t>>;
  EXPECT_EQ(chunks[ids["qemu:dirty-bitmap:weekly"]],
            (Runs{{2 << 20, 0}, {1 << 20, kStateDirty}, {1 << 20, 0}}));
  EXPECT_EQ(chunks[ids["base:allocation"]].size(), 3u);  // hole, data, hole
  // The unselected bitmap recorded the write too.
  EXPECT_EQ(export_->bitmaps().Get("daily")->dirty_bytes, 65536u);
}

TEST_F(NegotiationTest, InfoUnknownExport) {
  peer().Hello();
  peer().SendOption(kOptInfo, InfoPayload("nope"));
  EXPECT_EQ(peer().ReadOptReply().type, kRepErrUnknown);
  peer().SendOption(kOptGo, InfoPayload("nope"));
  EXPECT_EQ(peer().ReadOptReply().type, kRepErrUnknown);
}

TEST_F(NegotiationTest, InfoMalformedIsInvalid) {
  peer().Hello();
  peer().SendOption(kOptGo, Cat({U32(100), Str("mem")}));
  EXPECT_EQ(peer().ReadOptReply().type, kRepErrInvalid);
  peer().SendOption(kOptGo, {1});
  EXPECT_EQ(peer().ReadOptReply().type, kRepErrInvalid);
}

TEST_F(NegotiationTest, OverlongOptionIsTooBigAndSkipped) {
  peer().Hello();
  peer().SendOption(kOptInfo, std::vector<uint8_t>(200 * 1024, 'x'));
  EXPECT_EQ(peer().ReadOptReply().type, kRepErrTooBig);
  // The stream is still in sync.
  peer().SendOption(kOptList, {});
  EXPECT_EQ(peer().ReadOptReply().type, kRepServer);
}

TEST_F(NegotiationTest, BadOptionMagicCloses) {
  peer().Hello();
  std::vector<uint8_t> junk(16, 0x42);
  peer().Write(junk);
  EXPECT_TRUE(peer().SeesEof());
}

TEST_F(NegotiationTest, StructuredReplyOnceThenInvalid) {
  peer().Hello();
  peer().SendOption(kOptStructuredReply, {});
  EXPECT_EQ(peer().ReadOptReply().type, kRepAck);
  peer().SendOption(kOptStructuredReply, {});
  EXPECT_EQ(peer().ReadOptReply().type, kRepErrInvalid);
  peer().SendOption(kOptStructuredReply, {1});
  EXPECT_EQ(peer().ReadOptReply().type, kRepErrInvalid);
}

TEST_F(NegotiationTest, SetMetaContextNeedsStructuredReplies) {
  peer().Hello();
  peer().SendOption(kOptSetMetaContext, Cat({U32(3), Str("mem"), U32(1),
                                             U32(15), Str("base:allocation")}));
  EXPECT_EQ(peer().ReadOptReply().type, kRepErrInvalid);
}

TEST_F(NegotiationTest, ListMetaContextWithoutQueriesListsBaseAllocation) {
  peer().Hello();
  peer().SendOption(kOptListMetaContext, Cat({U32(3), Str("mem"), U32(0)}));
  auto r = peer().ReadOptReply();
  ASSERT_EQ(r.type, kRepMetaContext);
  EXPECT_EQ(GetU32(r.data.data()), 0u);
  EXPECT_EQ(std::string(r.data.begin() + 4, r.data.end()), "base:allocation");
  EXPECT_EQ(peer().ReadOptReply().type, kRepAck);
  // An unknown namespace matches nothing.
  peer().SendOption(kOptListMetaContext,
                    Cat({U32(3), Str("mem"), U32(1), U32(6), Str("qemu:x")}));
  EXPECT_EQ(peer().ReadOptReply().type, kRepAck);
}

TEST_F(NegotiationTest, SetMetaContextUnknownExport) {
  peer().Hello();
  peer().SendOption(kOptStructuredReply, {});
  EXPECT_EQ(peer().ReadOptReply().type, kRepAck);
  peer().SendOption(kOptSetMetaContext, Cat({U32(2), Str("no"), U32(1), U32(15),
                                             Str("base:allocation")}));
  EXPECT_EQ(peer().ReadOptReply().type, kRepErrUnknown);
}

TEST_F(NegotiationTest, ExportNameUnknownCloses) {
  peer().Hello();
  peer().SendOption(kOptExportName, Str("nope"));
  EXPECT_TRUE(peer().SeesEof());
}

TEST_F(NegotiationTest, ExportNameEntersTransmission) {
  peer().Hello();
  peer().SendOption(kOptExportName, Str("mem"));
  auto r = peer().Read(10);  // NO_ZEROES: size and flags only
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(GetU64(r->data()), kSize);
  peer().SendRequest(kCmdRead, 7, 0, 512);
  auto reply = peer().ReadSimpleReply();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->first, kOk);
  EXPECT_EQ(reply->second, 7u);
  EXPECT_EQ(*peer().Read(512), std::vector<uint8_t>(512, 0));
}

TEST_F(NegotiationTest, ExportNameWithZeroesWhenClientDidNotOptOut) {
  peer().Hello(kClientFlagFixedNewstyle);
  peer().SendOption(kOptExportName, Str("mem"));
  auto r = peer().Read(134);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(std::vector<uint8_t>(r->begin() + 10, r->end()),
            std::vector<uint8_t>(124, 0));
}

TEST_F(NegotiationTest, EmptyNameGoesToDefaultExport) {
  GoTo("", /*structured=*/false, /*meta=*/false);
  peer().SendRequest(kCmdFlush, 1, 0, 0);
  EXPECT_EQ(peer().ReadSimpleReply()->first, kOk);
}

TEST_F(NegotiationTest, TooManyOptionsCloses) {
  peer().Hello();
  // One write: the server closes after its limit, so later sends could fail.
  std::vector<uint8_t> burst;
  for (int i = 0; i < 300; ++i) {
    uint8_t h[16];
    PutU64(h, kIHaveOpt);
    PutU32(h + 8, 99);
    PutU32(h + 12, 0);
    burst.insert(burst.end(), h, h + 16);
  }
  peer().Write(burst);
  int replies = 0;
  while (auto h = peer().Read(kOptionReplyHeaderSize, 2000)) {
    ASSERT_EQ(GetU32(h->data() + 12), kRepErrUnsup);
    ASSERT_TRUE(peer().Read(GetU32(h->data() + 16)).has_value());
    ++replies;
  }
  EXPECT_EQ(replies, NegotiationOptions{}.max_options);
  EXPECT_TRUE(SessionEnds());
}

TEST_F(NegotiationTest, ClientVanishingMidOptionEndsSession) {
  peer().Hello();
  std::vector<uint8_t> h(16);
  PutU64(h.data(), kIHaveOpt);
  PutU32(h.data() + 8, kOptGo);
  PutU32(h.data() + 12, 100);
  peer().Write(h);  // promises 100 bytes, sends none
  server_.ClosePeer();
  EXPECT_TRUE(SessionEnds());
}

}  // namespace
}  // namespace nbdmgr::nbd
