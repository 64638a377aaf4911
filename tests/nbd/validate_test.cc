#include <gtest/gtest.h>

#include "lib/nbd/errors.h"
#include "lib/nbd/validation.h"

namespace nbdmgr::nbd {
namespace {

constexpr uint64_t kSize = 1 << 20;

RequestLimits Writable(bool structured = true, bool meta = true) {
  RequestLimits l;
  l.export_size = kSize;
  l.tx_flags = kTxHasFlags | kTxSendFlush | kTxSendFua | kTxSendTrim |
               kTxSendWriteZeroes | kTxSendFastZero;
  l.structured_replies = structured;
  l.meta_context = meta;
  l.max_payload = 32 << 20;
  return l;
}

RequestLimits ReadOnly() {
  RequestLimits l = Writable();
  l.tx_flags = kTxHasFlags | kTxSendFlush | kTxReadOnly;
  return l;
}

uint32_t Check(RequestHeader h, RequestLimits l = Writable()) {
  return ValidateRequest(h, l).error;
}

TEST(ValidateRequestTest, AcceptsValid) {
  EXPECT_EQ(Check({0, kCmdRead, 1, 0, 4096}), kOk);
  EXPECT_EQ(Check({kCmdFlagFua, kCmdWrite, 1, kSize - 1, 1}), kOk);
  EXPECT_EQ(Check({0, kCmdFlush, 1, 0, 0}), kOk);
  EXPECT_EQ(
      Check({kCmdFlagNoHole | kCmdFlagFastZero, kCmdWriteZeroes, 1, 0, kSize}),
      kOk);
  EXPECT_EQ(Check({kCmdFlagReqOne, kCmdBlockStatus, 1, 0, kSize}), kOk);
  EXPECT_EQ(Check({kCmdFlagDf, kCmdRead, 1, 0, 512}), kOk);
  EXPECT_EQ(Check({0, kCmdCache, 1, 0, 512}), kOk);
}

TEST(ValidateRequestTest, UnknownCommand) {
  EXPECT_EQ(Check({0, 9, 1, 0, 1}), kEinval);
  EXPECT_EQ(Check({0, kCmdResize, 1, 0, 1}), kEinval);
  EXPECT_EQ(Check({0, 0xffff, 1, 0, 1}), kEinval);
}

TEST(ValidateRequestTest, FlagsNotValidForCommand) {
  EXPECT_EQ(Check({kCmdFlagNoHole, kCmdWrite, 1, 0, 1}), kEinval);
  EXPECT_EQ(Check({kCmdFlagDf, kCmdWrite, 1, 0, 1}), kEinval);
  EXPECT_EQ(Check({kCmdFlagReqOne, kCmdRead, 1, 0, 1}), kEinval);
  EXPECT_EQ(Check({kCmdFlagFastZero, kCmdTrim, 1, 0, 1}), kEinval);
  EXPECT_EQ(Check({1 << 9, kCmdRead, 1, 0, 1}), kEinval);
  EXPECT_EQ(Check({kCmdFlagPayloadLen, kCmdWrite, 1, 0, 1}), kEinval);
  // DF needs structured replies.
  EXPECT_EQ(Check({kCmdFlagDf, kCmdRead, 1, 0, 1}, Writable(false)), kEinval);
  // FUA needs SEND_FUA, which read-only exports do not advertise.
  EXPECT_EQ(Check({kCmdFlagFua, kCmdRead, 1, 0, 1}, ReadOnly()), kEinval);
}

TEST(ValidateRequestTest, ReadOnlyExport) {
  EXPECT_EQ(Check({0, kCmdWrite, 1, 0, 1}, ReadOnly()), kEperm);
  EXPECT_EQ(Check({0, kCmdTrim, 1, 0, 1}, ReadOnly()), kEperm);
  EXPECT_EQ(Check({0, kCmdWriteZeroes, 1, 0, 1}, ReadOnly()), kEperm);
  EXPECT_EQ(Check({0, kCmdRead, 1, 0, 1}, ReadOnly()), kOk);
}

TEST(ValidateRequestTest, ZeroLength) {
  EXPECT_EQ(Check({0, kCmdRead, 1, 0, 0}), kEinval);
  EXPECT_EQ(Check({0, kCmdWrite, 1, 0, 0}), kEinval);
  EXPECT_EQ(Check({0, kCmdTrim, 1, 0, 0}), kEinval);
  EXPECT_EQ(Check({0, kCmdBlockStatus, 1, 0, 0}), kEinval);
}

TEST(ValidateRequestTest, Ranges) {
  EXPECT_EQ(Check({0, kCmdRead, 1, kSize, 1}), kEinval);
  EXPECT_EQ(Check({0, kCmdRead, 1, kSize - 1, 2}), kEinval);
  EXPECT_EQ(Check({0, kCmdTrim, 1, kSize - 1, 2}), kEinval);
  EXPECT_EQ(Check({0, kCmdWrite, 1, kSize - 1, 2}), kEnospc);
  EXPECT_EQ(Check({0, kCmdWriteZeroes, 1, kSize, 1}), kEnospc);
  // offset + length must not wrap around.
  EXPECT_EQ(Check({0, kCmdRead, 1, ~0ull, 2}), kEinval);
  EXPECT_EQ(Check({0, kCmdWrite, 1, ~0ull - 1, 4}), kEnospc);
}

TEST(ValidateRequestTest, PayloadAboveMaximum) {
  RequestLimits l = Writable();
  l.export_size = 1ull << 40;
  EXPECT_EQ(Check({0, kCmdRead, 1, 0, (32u << 20) + 1}, l), kEinval);
  EXPECT_EQ(Check({0, kCmdWrite, 1, 0, (32u << 20) + 1}, l), kEinval);
  // Commands without payload may be longer.
  EXPECT_EQ(Check({0, kCmdTrim, 1, 0, 1u << 31}, l), kOk);
  EXPECT_EQ(Check({0, kCmdWriteZeroes, 1, 0, 1u << 31}, l), kOk);
}

TEST(ValidateRequestTest, MinimumBlockSizeAlignment) {
  RequestLimits l = Writable();
  l.min_block = 512;
  EXPECT_EQ(Check({0, kCmdRead, 1, 512, 1024}, l), kOk);
  EXPECT_EQ(Check({0, kCmdRead, 1, 100, 512}, l), kEinval);
  EXPECT_EQ(Check({0, kCmdWrite, 1, 0, 100}, l), kEinval);
  EXPECT_EQ(Check({0, kCmdTrim, 1, 100, 100}, l), kOk);  // trim may be rounded
}

// CACHE is checked like READ: allowed read-only, EINVAL for a zero length,
// past the end, above the maximum payload (the spec bounds it by the
// maximum block size), unaligned, or with a flag other than FUA.
TEST(ValidateRequestTest, CacheIsCheckedLikeRead) {
  EXPECT_EQ(Check({0, kCmdCache, 1, 0, kSize}), kOk);
  EXPECT_EQ(Check({0, kCmdCache, 1, kSize - 1, 1}, ReadOnly()), kOk);
  EXPECT_EQ(Check({0, kCmdCache, 1, 0, 0}), kEinval);
  EXPECT_EQ(Check({0, kCmdCache, 1, kSize, 1}), kEinval);
  EXPECT_EQ(Check({0, kCmdCache, 1, kSize - 1, 2}), kEinval);
  EXPECT_EQ(Check({0, kCmdCache, 1, ~0ull, 2}), kEinval);
  EXPECT_EQ(Check({kCmdFlagNoHole, kCmdCache, 1, 0, 1}), kEinval);
  EXPECT_EQ(Check({kCmdFlagFua, kCmdCache, 1, 0, 1}), kOk);
  RequestLimits big = Writable();
  big.export_size = 1ull << 40;
  EXPECT_EQ(Check({0, kCmdCache, 1, 0, 32u << 20}, big), kOk);
  EXPECT_EQ(Check({0, kCmdCache, 1, 0, (32u << 20) + 1}, big), kEinval);
  RequestLimits aligned = Writable();
  aligned.min_block = 512;
  EXPECT_EQ(Check({0, kCmdCache, 1, 512, 1024}, aligned), kOk);
  EXPECT_EQ(Check({0, kCmdCache, 1, 100, 512}, aligned), kEinval);
  EXPECT_EQ(Check({0, kCmdCache, 1, 0, 100}, aligned), kEinval);
}

TEST(ValidateRequestTest, BlockStatusNeedsContext) {
  EXPECT_EQ(Check({0, kCmdBlockStatus, 1, 0, 1}, Writable(true, false)),
            kEinval);
}

TEST(NbdErrorFromStatusTest, Maps) {
  EXPECT_EQ(NbdErrorFromStatus(absl::OkStatus()), kOk);
  EXPECT_EQ(NbdErrorFromStatus(absl::ResourceExhaustedError("")), kEnospc);
  EXPECT_EQ(NbdErrorFromStatus(absl::PermissionDeniedError("")), kEperm);
  EXPECT_EQ(NbdErrorFromStatus(absl::InvalidArgumentError("")), kEinval);
  EXPECT_EQ(NbdErrorFromStatus(absl::UnimplementedError("")), kEnotsup);
  EXPECT_EQ(NbdErrorFromStatus(absl::InternalError("")), kEio);
  EXPECT_EQ(NbdErrorFromStatus(absl::DataLossError("")), kEio);
}

}  // namespace
}  // namespace nbdmgr::nbd
