#include "lib/nbd/transmission_flags.h"

#include <gtest/gtest.h>

#include "lib/nbd/wire.h"
#include "tests/export/memory_export.h"

namespace nbdmgr::nbd {
namespace {

using ::nbdmgr::test::MemoryExport;

TEST(TransmissionFlagsTest, FromCapsAndReadOnly) {
  auto rw = MemoryExport("rw");
  uint16_t f = TransmissionFlags(*rw, true);
  EXPECT_TRUE(f & kTxSendFua);
  EXPECT_TRUE(f & kTxSendTrim);
  EXPECT_TRUE(f & kTxSendWriteZeroes);
  EXPECT_TRUE(f & kTxSendFastZero);
  EXPECT_TRUE(f & kTxSendDf);
  EXPECT_FALSE(TransmissionFlags(*rw, false) & kTxSendDf);
  auto ro = MemoryExport("ro", true);
  uint16_t g = TransmissionFlags(*ro, false);
  EXPECT_TRUE(g & kTxReadOnly);
  EXPECT_FALSE(g & (kTxSendFua | kTxSendTrim | kTxSendWriteZeroes));
}

TEST(TransmissionFlagsTest, CacheIsAdvertisedReadOnlyToo) {
  EXPECT_TRUE(TransmissionFlags(*MemoryExport("rw"), true) & kTxSendCache);
  EXPECT_TRUE(TransmissionFlags(*MemoryExport("ro", true), false) &
              kTxSendCache);
}

}  // namespace
}  // namespace nbdmgr::nbd
