#include "lib/util/duration.h"

#include <gtest/gtest.h>

namespace nbdmgr {
namespace {

using std::chrono::milliseconds;

TEST(DurationTest, Parses) {
  EXPECT_EQ(*ParseDuration("250ms"), milliseconds(250));
  EXPECT_EQ(*ParseDuration("30s"), milliseconds(30000));
  EXPECT_EQ(*ParseDuration("5m"), milliseconds(300000));
  EXPECT_EQ(*ParseDuration("1h"), milliseconds(3600000));
  EXPECT_EQ(*ParseDuration("0"), milliseconds(0));
}

TEST(DurationTest, Rejects) {
  for (const char* bad : {"", "s", "10", "1.5s", "-1s", "10x", "1d", "3000000h",
                          "999999999999h"}) {
    EXPECT_FALSE(ParseDuration(bad).ok()) << bad;
  }
}

TEST(DurationTest, BoundedSoDeadlinesCannotOverflow) {
  EXPECT_TRUE(ParseDuration("876000h").ok());   // 100 years
  EXPECT_FALSE(ParseDuration("876001h").ok());  // just over
}

TEST(DurationTest, Formats) {
  EXPECT_EQ(FormatDuration(milliseconds(30000)), "30s");
  EXPECT_EQ(FormatDuration(milliseconds(250)), "250ms");
  EXPECT_EQ(FormatDuration(milliseconds(120000)), "2m");
}

}  // namespace
}  // namespace nbdmgr
