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
  for (const char* bad : {"", "s", "10", "1.5s", "-1s", "10x", "1d"}) {
    EXPECT_FALSE(ParseDuration(bad).ok()) << bad;
  }
}

TEST(DurationTest, Formats) {
  EXPECT_EQ(FormatDuration(milliseconds(30000)), "30s");
  EXPECT_EQ(FormatDuration(milliseconds(250)), "250ms");
  EXPECT_EQ(FormatDuration(milliseconds(120000)), "2m");
}

}  // namespace
}  // namespace nbdmgr
