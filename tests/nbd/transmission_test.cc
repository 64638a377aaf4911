// The transmission phase fed raw bytes: requests in, replies checked.

#include "lib/nbd/transmission.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <set>
#include <thread>

#include "lib/qos/qos_gate.h"
#include "tests/nbd/harness.h"

namespace nbdmgr::nbd {
namespace {

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

class TransmissionTest : public testing::SessionFixture {
 protected:
  void Go(bool structured = false, bool meta = false, bool read_only = false) {
    StartSession(read_only);
    GoTo("mem", structured, meta);
  }
  // Sends a request and expects a simple reply with `error`.
  void Expect(uint32_t error, uint16_t type, uint64_t offset, uint32_t length,
              uint16_t flags = 0, const std::vector<uint8_t>& payload = {}) {
    static uint64_t cookie = 100;
    ++cookie;
    peer().SendRequest(type, cookie, offset, length, flags, payload);
    auto r = peer().ReadSimpleReply();
    ASSERT_TRUE(r.has_value()) << NameOfCommand(type) << ": no reply";
    EXPECT_EQ(r->first, error) << NameOfCommand(type);
    EXPECT_EQ(r->second, cookie);
  }
  std::vector<uint8_t> SimpleRead(uint64_t offset, uint32_t length) {
    peer().SendRequest(kCmdRead, 1, offset, length);
    auto r = peer().ReadSimpleReply();
    EXPECT_TRUE(r.has_value());
    if (!r) return {};
    EXPECT_EQ(r->first, kOk);
    return peer().Read(length).value_or(std::vector<uint8_t>{});
  }
};

TEST_F(TransmissionTest, WriteThenReadBack) {
  Go();
  auto data = Pattern(65536 + 100, 3);
  Expect(kOk, kCmdWrite, 1000, static_cast<uint32_t>(data.size()), 0, data);
  EXPECT_EQ(SimpleRead(1000, static_cast<uint32_t>(data.size())), data);
  // Unwritten space reads as zeroes.
  EXPECT_EQ(SimpleRead(kSize - 512, 512), std::vector<uint8_t>(512, 0));
}

TEST_F(TransmissionTest, BadRequestsGetErrorsAndConnectionStaysUsable) {
  Go();
  Expect(kEinval, kCmdRead, kSize, 1);            // past the end
  Expect(kEinval, 42, 0, 1);                      // unknown command
  Expect(kEinval, kCmdRead, 0, 1, 1 << 12);       // unknown flag
  Expect(kEinval, kCmdRead, 0, 0);                // zero length
  Expect(kEinval, kCmdRead, 0, (32u << 20) + 1);  // above max payload
  Expect(kEinval, kCmdWrite, 0, 1, kCmdFlagReqOne,
         {9});                               // flag for another command
  Expect(kEinval, kCmdBlockStatus, 0, 512);  // no meta context
  auto data = Pattern(512, 9);
  Expect(kOk, kCmdWrite, 0, 512, kCmdFlagFua, data);
  EXPECT_EQ(SimpleRead(0, 512), data);
}

TEST_F(TransmissionTest, RejectedWritePayloadIsConsumed) {
  Go();
  // The payload of a rejected WRITE is read and discarded, so the bytes
  // that follow are parsed as the next request.
  auto junk = std::vector<uint8_t>(100000, 0x25);  // looks like request magic
  Expect(kEnospc, kCmdWrite, kSize - 10, static_cast<uint32_t>(junk.size()), 0,
         junk);
  auto big = std::vector<uint8_t>((32u << 20) + 8, 0x61);
  Expect(kEinval, kCmdWrite, 0, static_cast<uint32_t>(big.size()), 0, big);
  Expect(kOk, kCmdFlush, 0, 0);
}

TEST_F(TransmissionTest, BadMagicClosesConnection) {
  Go();
  std::vector<uint8_t> garbage(28, 0xee);
  peer().Write(garbage);
  EXPECT_TRUE(peer().SeesEof());
  EXPECT_TRUE(SessionEnds());
}

TEST_F(TransmissionTest, TruncatedPayloadEndsSession) {
  Go();
  peer().SendRequest(kCmdWrite, 5, 0, 4096, 0, std::vector<uint8_t>(100, 1));
  server_.ClosePeer();
  EXPECT_TRUE(SessionEnds());
  EXPECT_EQ(export_->clients(), 0);
}

TEST_F(TransmissionTest, DiscAnswersOutstandingRequestsThenCloses) {
  Go();
  auto data = Pattern(4096, 1);
  peer().SendRequest(kCmdWrite, 1, 0, 4096, 0, data);
  peer().SendRequest(kCmdRead, 2, 0, 4096);
  peer().SendRequest(kCmdDisc, 3, 0, 0);
  auto w = peer().ReadSimpleReply();
  ASSERT_TRUE(w && w->second == 1u && w->first == kOk);
  auto r = peer().ReadSimpleReply();
  ASSERT_TRUE(r && r->second == 2u && r->first == kOk);
  EXPECT_EQ(*peer().Read(4096), data);
  EXPECT_TRUE(peer().SeesEof());
  EXPECT_TRUE(SessionEnds());
}

TEST_F(TransmissionTest, ManyRequestsInFlight) {
  Go();
  // 300 pipelined writes, more than the in-flight limit, before reading any
  // reply; then every cookie must be answered exactly once.
  constexpr int kN = 300;
  std::thread writer([&] {
    for (int i = 0; i < kN; ++i) {
      peer().SendRequest(kCmdWrite, 1000 + i, i * 4096, 4096, 0,
                         Pattern(4096, static_cast<uint8_t>(i)));
    }
  });
  std::set<uint64_t> cookies;
  for (int i = 0; i < kN; ++i) {
    auto r = peer().ReadSimpleReply();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->first, kOk);
    cookies.insert(r->second);
  }
  writer.join();
  EXPECT_EQ(cookies.size(), static_cast<size_t>(kN));
  EXPECT_EQ(SimpleRead(299 * 4096, 4096), Pattern(4096, 299 % 256));
}

TEST_F(TransmissionTest, QosLimitsDelayRequestsAndLiveChangesReachWaiters) {
  Go();
  QosLimits slow;
  slow[QosLimitKind::kIopsTotal] = {50, 1};
  export_->set_qos_limits(slow);
  // 40 pipelined reads: at 50 IOPS most must wait (0.8 s in all). Halfway,
  // another thread lifts the limit: the waiting reader is woken across
  // threads and the rest go at once. Every request is answered, none fails.
  constexpr int kN = 40;
  std::thread sender([&] {
    for (int i = 0; i < kN; ++i) peer().SendRequest(kCmdRead, 500 + i, 0, 4096);
  });
  std::set<uint64_t> cookies;
  for (int i = 0; i < kN; ++i) {
    auto r = peer().ReadSimpleReply();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->first, kOk);
    cookies.insert(r->second);
    ASSERT_TRUE(peer().Read(4096).has_value());
    if (i == 5) {
      QosLimits fast;
      fast[QosLimitKind::kIopsTotal] = {1000000, 1000};
      export_->set_qos_limits(fast);
    }
    if (i == 10) export_->set_qos_limits({});
  }
  sender.join();
  EXPECT_EQ(cookies.size(), static_cast<size_t>(kN));
  const ThrottleStats st = export_->qos().stats();
  EXPECT_GE(st.throttled_requests, 4u);
  EXPECT_EQ(st.waiting, 0u);
  EXPECT_FALSE(export_->qos().engaged());
}

TEST_F(TransmissionTest, QosGroupLimitsAreSharedAndStopEndsAWait) {
  Go();
  auto group = std::make_shared<QosGroup>("g", QosLimits{});
  QosLimits crawl;
  crawl[QosLimitKind::kIopsTotal] = {1, 1};
  group->SetLimits(crawl);
  export_->set_qos_group(group);
  EXPECT_EQ(export_->current_config().qos_group, "g");
  SimpleRead(0, 512);  // the burst
  // The next waits a second in the group's queue; FLUSH and BLOCK_STATUS
  // are not limited but queue behind it on this connection.
  peer().SendRequest(kCmdRead, 77, 0, 512);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(group->throttle().stats().waiting, 1u);
  group->SetLimits({});  // lifted: it goes at once
  auto r = peer().ReadSimpleReply();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->second, 77u);
  ASSERT_TRUE(peer().Read(512).has_value());
  EXPECT_GE(group->throttle().stats().throttled_requests, 1u);
  // Limited again; a request waits, and the session is stopped (a drain):
  // the wait ends at once, the request is answered, the session ends.
  group->SetLimits(crawl);
  SimpleRead(0, 512);
  peer().SendRequest(kCmdRead, 78, 0, 512);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(group->throttle().stats().waiting, 1u);
  boost::asio::post(server_.ioc(), [s = session_] { s->Stop(); });
  r = peer().ReadSimpleReply();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->second, 78u);
  EXPECT_EQ(group->throttle().stats().waiting, 0u);
  export_->set_qos_group(nullptr);
  EXPECT_EQ(group->members(), 0);
}

TEST_F(TransmissionTest, TrimAndZeroReadBackAsZeroes) {
  Go(/*structured=*/false);
  Expect(kOk, kCmdWrite, 0, 200000, 0, Pattern(200000, 5));
  Expect(kOk, kCmdTrim, 0, 100000);
  EXPECT_EQ(SimpleRead(0, 100000), std::vector<uint8_t>(100000, 0));
  Expect(kOk, kCmdWriteZeroes, 100000, 50000, kCmdFlagNoHole);
  Expect(kOk, kCmdWriteZeroes, 150000, 50000, kCmdFlagFastZero | kCmdFlagFua);
  EXPECT_EQ(SimpleRead(100000, 100000), std::vector<uint8_t>(100000, 0));
}

TEST_F(TransmissionTest, ReadOnlyExportRefusesWrites) {
  Go(false, false, /*read_only=*/true);
  Expect(kEperm, kCmdWrite, 0, 512, 0, std::vector<uint8_t>(512, 1));
  Expect(kEperm, kCmdTrim, 0, 512);
  Expect(kEperm, kCmdWriteZeroes, 0, 512);
  Expect(kEinval, kCmdRead, 0, 512, kCmdFlagFua);  // FUA not advertised
  EXPECT_EQ(SimpleRead(0, 512), std::vector<uint8_t>(512, 0));
}

TEST_F(TransmissionTest, StructuredReadOfHoleIsOneHoleChunk) {
  Go(/*structured=*/true);
  peer().SendRequest(kCmdRead, 9, 0, 1 << 20);
  auto c = peer().ReadChunk();
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->type, kChunkOffsetHole);
  EXPECT_EQ(c->flags, kReplyFlagDone);
  EXPECT_EQ(c->cookie, 9u);
  ASSERT_EQ(c->payload.size(), 12u);
  EXPECT_EQ(GetU64(c->payload.data()), 0u);
  EXPECT_EQ(GetU32(c->payload.data() + 8), 1u << 20);
}

TEST_F(TransmissionTest, StructuredReadMixesDataAndHoles) {
  Go(/*structured=*/true);
  const uint32_t page = 64 * 1024;
  auto data = Pattern(page, 7);
  Expect(kOk, kCmdWrite, page, page, 0, data);  // page 1 has data
  peer().SendRequest(kCmdRead, 10, 0, 3 * page);
  std::vector<uint8_t> image(3 * page, 0xff);
  uint64_t covered = 0;
  for (;;) {
    auto c = peer().ReadChunk();
    ASSERT_TRUE(c.has_value());
    EXPECT_EQ(c->cookie, 10u);
    uint64_t off = GetU64(c->payload.data());
    if (c->type == kChunkOffsetHole) {
      uint32_t len = GetU32(c->payload.data() + 8);
      std::fill_n(image.begin() + off, len, 0);
      covered += len;
    } else {
      ASSERT_EQ(c->type, kChunkOffsetData);
      std::copy(c->payload.begin() + 8, c->payload.end(), image.begin() + off);
      covered += c->payload.size() - 8;
    }
    if (c->flags & kReplyFlagDone) break;
  }
  EXPECT_EQ(covered, 3u * page);
  std::vector<uint8_t> want(3 * page, 0);
  std::copy(data.begin(), data.end(), want.begin() + page);
  EXPECT_EQ(image, want);
}

TEST_F(TransmissionTest, StructuredReadWithDfIsOneDataChunk) {
  Go(/*structured=*/true);
  Expect(kOk, kCmdWrite, 0, 100, 0, Pattern(100, 1));
  peer().SendRequest(kCmdRead, 11, 0, 200000, kCmdFlagDf);
  auto c = peer().ReadChunk();
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->type, kChunkOffsetData);
  EXPECT_EQ(c->flags, kReplyFlagDone);
  EXPECT_EQ(c->payload.size(), 8u + 200000);
}

TEST_F(TransmissionTest, StructuredReadErrorIsErrorChunk) {
  Go(/*structured=*/true);
  peer().SendRequest(kCmdRead, 12, kSize, 512);
  auto c = peer().ReadChunk();
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->type, kChunkError);
  EXPECT_EQ(c->flags, kReplyFlagDone);
  ASSERT_GE(c->payload.size(), 6u);
  EXPECT_EQ(GetU32(c->payload.data()), kEinval);
  uint16_t msg_len = GetU16(c->payload.data() + 4);
  EXPECT_EQ(c->payload.size(), 6u + msg_len);
  EXPECT_GT(msg_len, 0);
}

TEST_F(TransmissionTest, BlockStatusReportsExtents) {
  Go(/*structured=*/true, /*meta=*/true);
  const uint32_t page = 64 * 1024;
  Expect(kOk, kCmdWrite, 2 * page, page, 0, Pattern(page, 2));
  peer().SendRequest(kCmdBlockStatus, 20, 0, 4 * page);
  auto c = peer().ReadChunk();
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->type, kChunkBlockStatus);
  EXPECT_EQ(c->flags, kReplyFlagDone);
  ASSERT_EQ(c->payload.size(), 4u + 3 * 8);
  EXPECT_EQ(GetU32(c->payload.data()), kBaseAllocationId);
  auto desc = [&](int i) {
    return std::make_pair(GetU32(c->payload.data() + 4 + 8 * i),
                          GetU32(c->payload.data() + 8 + 8 * i));
  };
  EXPECT_EQ(desc(0), std::make_pair(2 * page, kStateHole | kStateZero));
  EXPECT_EQ(desc(1), std::make_pair(page, 0u));
  EXPECT_EQ(desc(2), std::make_pair(page, kStateHole | kStateZero));

  peer().SendRequest(kCmdBlockStatus, 21, 0, 4 * page, kCmdFlagReqOne);
  auto one = peer().ReadChunk();
  ASSERT_TRUE(one.has_value());
  ASSERT_EQ(one->payload.size(), 12u);
  EXPECT_EQ(GetU32(one->payload.data() + 4), 2 * page);
}

TEST_F(TransmissionTest, NoHoleZeroStaysAllocated) {
  Go(true, true);
  const uint32_t page = 64 * 1024;
  Expect(kOk, kCmdWriteZeroes, 0, page, kCmdFlagNoHole);
  Expect(kOk, kCmdWriteZeroes, page, page);
  peer().SendRequest(kCmdBlockStatus, 22, 0, 2 * page);
  auto c = peer().ReadChunk();
  ASSERT_TRUE(c.has_value());
  ASSERT_EQ(c->payload.size(), 4u + 2 * 8);
  // Allocated, and known to read as zeroes.
  EXPECT_EQ(GetU32(c->payload.data() + 8), kStateZero);
  EXPECT_EQ(GetU32(c->payload.data() + 16), kStateHole | kStateZero);
  // Data written over it is data again.
  Expect(kOk, kCmdWrite, 100, 4, 0, Pattern(4, 1));
  peer().SendRequest(kCmdBlockStatus, 23, 0, page);
  auto d = peer().ReadChunk();
  ASSERT_TRUE(d.has_value());
  ASSERT_EQ(d->payload.size(), 4u + 8);
  EXPECT_EQ(GetU32(d->payload.data() + 8), 0u);
}

TEST_F(TransmissionTest, CacheIsAnsweredAndCheckedLikeRead) {
  Go();
  Expect(kOk, kCmdCache, 0, kSize);
  Expect(kOk, kCmdCache, kSize - 1, 1);
  Expect(kEinval, kCmdCache, kSize - 1, 2);          // past the end
  Expect(kEinval, kCmdCache, 0, 0);                  // zero length
  Expect(kEinval, kCmdCache, 0, 1, kCmdFlagNoHole);  // not its flag
  auto data = Pattern(512, 4);
  Expect(kOk, kCmdWrite, 0, 512, 0, data);
  EXPECT_EQ(SimpleRead(0, 512), data);  // still usable
}

TEST_F(TransmissionTest, CacheIsAllowedReadOnly) {
  Go(false, false, /*read_only=*/true);
  Expect(kOk, kCmdCache, 0, 4096);
  Expect(kEperm, kCmdWrite, 0, 1, 0, {1});
}

}  // namespace
}  // namespace nbdmgr::nbd

namespace nbdmgr::nbd {
namespace {

// Streaming (buffers smaller than a request) applies to backends read
// through buffers; memory exports lend their pages and need none (see
// ZeroCopyReadTest), so these run on a file export.
class StreamingTest : public testing::SessionFixture {
 protected:
  void Go(bool structured, BufferSettings buffers) {
    StartSession(false, buffers, BackendKind::kFile);
    GoTo("mem", structured, false);
  }
};

BufferSettings Streaming() {
  BufferSettings b;
  b.strategy = BufferStrategy::kStream;
  return b;
}

TEST_F(StreamingTest, SimpleRepliesRoundTripInChunks) {
  Go(false, Streaming());
  auto data = Pattern(3 * 1024 * 1024 + 17, 4);  // many 256 KiB chunks
  peer().SendRequest(kCmdWrite, 1, 5, static_cast<uint32_t>(data.size()),
                     kCmdFlagFua, data);
  auto w = peer().ReadSimpleReply();
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->first, kOk);
  peer().SendRequest(kCmdRead, 2, 5, static_cast<uint32_t>(data.size()));
  auto r = peer().ReadSimpleReply();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->first, kOk);
  EXPECT_EQ(peer().Read(data.size()), data);
  EXPECT_GT(export_->buffers().stats().streamed, 0u);
  // Only chunks were charged, never a request-sized buffer, and they are
  // all back.
  EXPECT_LE(buffer_system_.budget().stats().peak, 2 * kStreamChunk);
  // The last chunk comes back just after its bytes are written.
  EXPECT_EQ(
      testing::WaitForZero([&] { return buffer_system_.budget().used(); }), 0u);
}

TEST_F(StreamingTest, StructuredReadIsChunkedOffsetData) {
  Go(true, Streaming());
  auto data = Pattern(600 * 1024, 8);
  peer().SendRequest(kCmdWrite, 1, 0, static_cast<uint32_t>(data.size()), 0,
                     data);
  ASSERT_EQ(peer().ReadSimpleReply()->first, kOk);
  peer().SendRequest(kCmdRead, 2, 0, static_cast<uint32_t>(data.size()));
  int chunks = 0;
  auto got = peer().ReadDataChunks(0, data.size(), &chunks);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(chunks, 3);
  EXPECT_EQ(*got, data);
}

TEST_F(StreamingTest, RequestLargerThanCapStillCompletes) {
  BufferSettings b;
  b.strategy = BufferStrategy::kPool;
  b.memory_cap_bytes = 1 << 20;  // smaller than the request
  Go(false, b);
  auto data = Pattern(3 << 20, 1);
  peer().SendRequest(kCmdWrite, 1, 0, 3 << 20, 0, data);
  ASSERT_EQ(peer().ReadSimpleReply()->first, kOk);
  peer().SendRequest(kCmdRead, 2, 0, 3 << 20);
  ASSERT_EQ(peer().ReadSimpleReply()->first, kOk);
  EXPECT_EQ(peer().Read(3 << 20), data);
  EXPECT_LE(export_->buffers().stats().in_use, 1u << 20);
}

TEST_F(StreamingTest, SwitchingStrategyAndCapUnderLoadLosesNothing) {
  // A memory export: its requests run in order, so a READ pipelined behind
  // the WRITE of the same range sees it (WRITEs still take buffers).
  StartSession(false, BufferSettings{});
  GoTo("mem", false, false);
  std::atomic<bool> stop{false};
  std::thread switcher([&] {
    const BufferStrategy all[] = {BufferStrategy::kFixed, BufferStrategy::kGrow,
                                  BufferStrategy::kExact, BufferStrategy::kPool,
                                  BufferStrategy::kStream};
    for (int i = 0; !stop; ++i) {
      BufferSettings b;
      b.strategy = all[i % 5];
      b.memory_cap_bytes =
          (i % 3 == 0) ? 0 : (i % 3 == 1 ? (2u << 20) : (512u << 10));
      export_->buffers().Update(b);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  // Pipelined writes and reads of varied sizes, every byte verified.
  for (int round = 0; round < 40; ++round) {
    const uint32_t len = 4096u << (round % 9);  // 4 KiB .. 1 MiB
    const uint64_t off = (round * 37 % 3) * (1 << 20);
    auto data = Pattern(len, static_cast<uint8_t>(round));
    peer().SendRequest(kCmdWrite, 2 * round, off, len, 0, data);
    peer().SendRequest(kCmdRead, 2 * round + 1, off, len);
    for (int k = 0; k < 2; ++k) {
      auto r = peer().ReadSimpleReply();
      ASSERT_TRUE(r.has_value()) << "connection dropped in round " << round;
      ASSERT_EQ(r->first, kOk);
      if (r->second % 2 == 1) {
        ASSERT_EQ(peer().Read(len), data) << "round " << round;
      }
    }
  }
  stop = true;
  switcher.join();
  EXPECT_EQ(export_->clients(), 1);
}

}  // namespace
}  // namespace nbdmgr::nbd

namespace nbdmgr::nbd {
namespace {

// The export's counters see every answered request, by op and result, with
// payload bytes of the successful ones only.
// Memory exports answer READs with their own pages: no request buffer and
// no copy; the pinned bytes are charged to the caps until written.
TEST_F(StreamingTest, MemoryReadsBorrowPagesInsteadOfBuffers) {
  BufferSettings b;
  b.strategy = BufferStrategy::kPool;
  b.memory_cap_bytes = 16 << 20;  // 4 MiB per connection (25% share)
  StartSession(false, b);
  GoTo("mem", true, false);
  auto data = Pattern(3 << 20, 6);
  peer().SendRequest(kCmdWrite, 1, 4096, 3 << 20, 0, data);
  ASSERT_EQ(peer().ReadSimpleReply()->first, kOk);
  const ExportBufferStats before = export_->buffers().stats();
  // A READ, then a TRIM of the same range before its reply is out: the
  // READ runs first (requests of a memory export run in order), so its
  // reply carries the written data, from pages the TRIM has already
  // removed from the export (ASan would see a use after free otherwise).
  peer().SendRequest(kCmdRead, 2, 4096, 3 << 20);
  peer().SendRequest(kCmdTrim, 3, 0, 4 << 20);
  auto c = peer().ReadChunk();
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->cookie, 2u);
  EXPECT_EQ(c->type, kChunkOffsetData);
  EXPECT_TRUE(c->flags & kReplyFlagDone);
  ASSERT_EQ(c->payload.size(), 8u + (3 << 20));
  EXPECT_EQ(GetU64(c->payload.data()), 4096u);
  EXPECT_TRUE(std::equal(data.begin(), data.end(), c->payload.begin() + 8));
  auto t = peer().ReadSimpleReply();
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(*t, std::make_pair(uint32_t{kOk}, uint64_t{3}));
  peer().SendRequest(kCmdRead, 4, 0, 1 << 20);
  c = peer().ReadChunk();
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->type, kChunkOffsetHole);  // the trim freed it all
  const ExportBufferStats after = export_->buffers().stats();
  EXPECT_EQ(after.allocations, before.allocations);
  EXPECT_EQ(after.reuses, before.reuses);
  EXPECT_EQ(after.streamed, before.streamed);
  EXPECT_EQ(after.cap_full, before.cap_full);
}

TEST_F(TransmissionTest, CountsRequestsByOpAndResult) {
  Go();
  auto data = Pattern(8192, 5);
  Expect(kOk, kCmdWrite, 0, 8192, 0, data);
  Expect(kOk, kCmdWrite, 8192, 8192, kCmdFlagFua, data);
  EXPECT_EQ(SimpleRead(0, 4096).size(), 4096u);
  Expect(kEinval, kCmdRead, kSize, 1);  // past the end
  Expect(kEnospc, kCmdWrite, kSize - 10, 512, 0, Pattern(512, 1));
  Expect(kEinval, 42, 0, 1);  // unknown command
  Expect(kOk, kCmdFlush, 0, 0);
  // A reply is counted just after it is written, so the client may see it
  // first: wait for the last one.
  IoCounts c;
  for (int i = 0; i < 500; ++i) {
    c = export_->io_stats().Snapshot();
    if (c.total_requests(IoOp::kFlush) == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(c.requests[0][0], 1u);  // read ok
  EXPECT_EQ(c.requests[0][static_cast<int>(IoResult::kEinval)], 1u);
  EXPECT_EQ(c.requests[1][0], 2u);  // write ok
  EXPECT_EQ(c.requests[1][static_cast<int>(IoResult::kEnospc)], 1u);
  EXPECT_EQ(c.requests[static_cast<int>(IoOp::kOther)]
                      [static_cast<int>(IoResult::kEinval)],
            1u);
  EXPECT_EQ(c.total_requests(IoOp::kFlush), 1u);
  EXPECT_EQ(c.bytes_read, 4096u);
  EXPECT_EQ(c.bytes_written, 16384u);
  EXPECT_EQ(c.errors(), 3u);
  uint64_t in_histogram = 0;
  for (uint64_t n : c.latency[1]) in_histogram += n;
  EXPECT_EQ(in_histogram, 3u);  // every write has a latency sample
}

}  // namespace
}  // namespace nbdmgr::nbd

namespace nbdmgr::nbd {
namespace {

// Liveness: what a client that stops moving can hold, and for how long.
class LivenessTest : public testing::SessionFixture {
 protected:
  // A file export (READs take buffers) capped at `cap`, with a short stall
  // timeout.
  void Go(uint64_t cap, std::chrono::milliseconds stall) {
    session_options_.stall_timeout = stall;
    BufferSettings b;
    b.memory_cap_bytes = cap;
    StartSession(false, b, BackendKind::kFile);
    GoTo("mem", false, false);
  }
  uint64_t Refusals(Refusal r) const {
    return server_stats_.Snapshot().refusals[static_cast<size_t>(r)];
  }
};

TEST_F(LivenessTest, StalledWritePayloadIsDroppedAndItsMemoryComesBack) {
  Go(0, std::chrono::milliseconds(300));
  // A 1 MiB WRITE whose payload stops after one byte.
  peer().SendRequest(kCmdWrite, 1, 0, 1 << 20, 0, {0x42});
  EXPECT_TRUE(SessionEnds()) << "a stalled payload must end the session";
  EXPECT_EQ(Refusals(Refusal::kStallPayload), 1u);
  EXPECT_EQ(Refusals(Refusal::kStallReplies), 0u);
  EXPECT_EQ(buffer_system_.budget().used(), 0u);
  EXPECT_EQ(export_->buffers().stats().in_use, 0u);
}

TEST_F(LivenessTest, UnreadRepliesAreDroppedAndTheirMemoryComesBack) {
  Go(0, std::chrono::milliseconds(300));
  std::vector<uint8_t> data(1 << 20, 7);
  peer().SendRequest(kCmdWrite, 1, 0, 1 << 20, 0, data);
  ASSERT_EQ(peer().ReadSimpleReply()->first, kOk);
  // Eight 1 MiB READs that are never read: the socket fills, the writer
  // stops moving.
  for (uint64_t i = 0; i < 8; ++i)
    peer().SendRequest(kCmdRead, 10 + i, 0, 1 << 20);
  EXPECT_TRUE(SessionEnds()) << "unread replies must end the session";
  EXPECT_EQ(Refusals(Refusal::kStallReplies), 1u);
  EXPECT_EQ(buffer_system_.budget().used(), 0u);
}

TEST_F(LivenessTest, SlowButMovingClientIsNotDropped) {
  Go(0, std::chrono::milliseconds(400));
  std::vector<uint8_t> data(64 * 1024, 9);
  peer().SendRequest(kCmdWrite, 1, 0, 64 * 1024, 0, {});
  // Trickle the payload: 16 pieces, each well inside the stall timeout,
  // the whole well past it.
  for (size_t i = 0; i < 16; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    peer().Write(std::vector<uint8_t>(data.begin() + i * 4096,
                                      data.begin() + (i + 1) * 4096));
  }
  auto r = peer().ReadSimpleReply();
  ASSERT_TRUE(r.has_value()) << "a slow client that keeps moving was dropped";
  EXPECT_EQ(r->first, kOk);
  EXPECT_EQ(Refusals(Refusal::kStallPayload), 0u);
}

TEST_F(LivenessTest, ExportStallTimeoutOverridesTheDaemons) {
  session_options_.stall_timeout = std::chrono::hours(1);
  BufferSettings b;
  StartSession(false, b, BackendKind::kFile);
  export_->set_stall_timeout(std::chrono::milliseconds(200));
  GoTo("mem", false, false);
  peer().SendRequest(kCmdWrite, 1, 0, 4096, 0, {1, 2, 3});
  EXPECT_TRUE(SessionEnds());
  EXPECT_EQ(Refusals(Refusal::kStallPayload), 1u);
}

TEST_F(LivenessTest, FullCapStreamsInsteadOfWaiting) {
  // A 1 MiB cap with a 25% share: no 1 MiB buffer is ever granted, so
  // every request goes through the connection's reserve, and nothing waits.
  Go(1 << 20, std::chrono::milliseconds(0));
  auto data = Pattern(3 << 20, 11);
  peer().SendRequest(kCmdWrite, 1, 0, 3 << 20, 0, data);
  ASSERT_EQ(peer().ReadSimpleReply()->first, kOk);
  peer().SendRequest(kCmdRead, 2, 0, 3 << 20);
  auto r = peer().ReadSimpleReply();
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->first, kOk);
  EXPECT_EQ(peer().Read(3 << 20), data);
  // The last chunk comes back just after its bytes are written.
  testing::WaitForZero([&] { return export_->buffers().stats().in_use; });
  const ExportBufferStats s = export_->buffers().stats();
  EXPECT_EQ(s.streamed, 2u);
  EXPECT_EQ(s.cap_full, 2u);
  EXPECT_EQ(s.in_use, 0u);
}

TEST_F(LivenessTest, PinnedReadsAreChargedAndStreamWhenTheCapIsFull) {
  BufferSettings b;
  b.memory_cap_bytes = 64 * 1024;
  StartSession(false, b);  // memory: zero-copy READs
  GoTo("mem", true, false);
  auto data = Pattern(3 << 20, 12);
  peer().SendRequest(kCmdWrite, 1, 0, 3 << 20, 0, data);
  ASSERT_EQ(peer().ReadSimpleReply()->first, kOk);
  // 3 MiB of pins do not fit a 64 KiB cap: the READ is copied out in
  // chunks instead, and no pinned byte escapes the cap.
  peer().SendRequest(kCmdRead, 2, 0, 3 << 20);
  int chunks = 0;
  auto got = peer().ReadDataChunks(0, 3 << 20, &chunks);
  ASSERT_TRUE(got.has_value());
  EXPECT_GT(chunks, 1);
  EXPECT_EQ(*got, data);
  EXPECT_EQ(
      testing::WaitForZero([&] { return buffer_system_.budget().used(); }), 0u);
}

// The in-flight ticket: every path ends it, and the reader's wait for room
// wakes when it does.
TEST(TicketTest, EveryTicketEndsOnceWhetherSentDroppedOrDestroyed) {
  testing::ServerThread server;
  Connection conn(server.TakeSocket());
  ReplyWriter w(conn);
  {
    Ticket a = w.BeginRequest();
    Ticket b = w.BeginRequest();
    EXPECT_EQ(w.in_flight(), 2u);
    Ticket moved = std::move(a);
    EXPECT_FALSE(a);
    EXPECT_EQ(w.in_flight(), 2u);  // a move does not end it
    moved.Reset();
    EXPECT_EQ(w.in_flight(), 1u);
    moved.Reset();  // idempotent
    EXPECT_EQ(w.in_flight(), 1u);
  }  // b destroyed unsent: ended all the same
  EXPECT_EQ(w.in_flight(), 0u);
}

}  // namespace
}  // namespace nbdmgr::nbd

namespace nbdmgr::nbd {
namespace {

// Stands for a network backend whose library finishes calls on threads of
// its own (librbd's aio callbacks): each READ, WRITE and FLUSH is done by a
// worker thread, which calls Complete there; every fifth call completes
// before the call that started it returns.
class ThreadedAsyncBackend final : public Backend {
 public:
  explicit ThreadedAsyncBackend(std::unique_ptr<Backend> inner)
      : inner_(std::move(inner)), worker_([this] { Work(); }) {}
  ~ThreadedAsyncBackend() override {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }
  uint64_t size() const override { return inner_->size(); }
  BackendCaps caps() const override {
    BackendCaps c = inner_->caps();
    c.async = true;
    c.async_needs_ring = false;
    c.blocking = false;  // like a network backend: async, never blocking
    c.zero_copy_read = false;
    return c;
  }
  absl::Status Read(uint64_t o, std::span<uint8_t> b) override {
    return inner_->Read(o, b);
  }
  absl::Status Write(uint64_t o, std::span<const uint8_t> d,
                     bool fua) override {
    return inner_->Write(o, d, fua);
  }
  absl::Status Flush() override { return inner_->Flush(); }
  absl::Status Trim(uint64_t o, uint64_t l, bool fua) override {
    return inner_->Trim(o, l, fua);
  }
  absl::Status Zero(uint64_t o, uint64_t l, ZeroOptions z) override {
    return inner_->Zero(o, l, z);
  }
  void ReadAsync(uint64_t o, std::span<uint8_t> b, IoRing*,
                 IoCompletion& done) override {
    Start(done, [this, o, b] { return inner_->Read(o, b); });
  }
  void WriteAsync(uint64_t o, std::span<const uint8_t> d, bool fua, IoRing*,
                  IoCompletion& done) override {
    Start(done, [this, o, d, fua] { return inner_->Write(o, d, fua); });
  }
  void FlushAsync(IoRing*, IoCompletion& done) override {
    Start(done, [this] { return inner_->Flush(); });
  }

  std::atomic<int> on_worker{0};
  std::atomic<int> inline_done{0};

 private:
  void Start(IoCompletion& done, std::function<absl::Status()> fn) {
    if (++calls_ % 5 == 0) {
      ++inline_done;
      done.Complete(fn());
      return;
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      jobs_.push_back([this, &done, fn = std::move(fn)] {
        ++on_worker;
        done.Complete(fn());
      });
    }
    cv_.notify_one();
  }
  void Work() {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      cv_.wait(l, [this] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      l.unlock();
      job();
      l.lock();
    }
  }

  std::unique_ptr<Backend> inner_;
  std::atomic<int> calls_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stop_ = false;
  std::thread worker_;
};

class AsyncBackendTest : public testing::SessionFixture {};

// Requests pipelined on one connection, completed from another thread (or
// before their call returned), each answered once with the right bytes.
TEST_F(AsyncBackendTest, CompletionsFromAnotherThreadResumeTheRequest) {
  auto inner = MemoryBackend::Create(kSize);
  ASSERT_TRUE(inner.ok());
  auto backend = std::make_unique<ThreadedAsyncBackend>(std::move(*inner));
  ThreadedAsyncBackend* b = backend.get();
  backend_override_ = std::move(backend);
  StartSession();
  GoTo("mem", false, false);
  constexpr int kN = 200;
  std::thread sender([&] {
    for (int i = 0; i < kN; ++i) {
      peer().SendRequest(kCmdWrite, 1000 + i, i * 4096, 4096,
                         i % 7 == 0 ? kCmdFlagFua : 0,
                         Pattern(4096, static_cast<uint8_t>(i)));
    }
    peer().SendRequest(kCmdFlush, 5000, 0, 0);
  });
  std::set<uint64_t> cookies;
  for (int i = 0; i < kN + 1; ++i) {
    auto r = peer().ReadSimpleReply();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->first, kOk);
    cookies.insert(r->second);
  }
  sender.join();
  EXPECT_EQ(cookies.size(), static_cast<size_t>(kN + 1));
  for (int i = 0; i < kN; i += 13) {
    peer().SendRequest(kCmdRead, 7000 + i, i * 4096, 4096);
    auto r = peer().ReadSimpleReply();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->first, kOk);
    EXPECT_EQ(r->second, static_cast<uint64_t>(7000 + i));
    EXPECT_EQ(peer().Read(4096), Pattern(4096, uint8_t(i)));
  }
  EXPECT_GT(b->on_worker.load(), kN / 2);
  EXPECT_GT(b->inline_done.load(), 0);
}

}  // namespace
}  // namespace nbdmgr::nbd
