#include "lib/util/size.h"

#include <gtest/gtest.h>

namespace nbdmgr {
namespace {

TEST(ParseSizeTest, PlainBytes) { EXPECT_EQ(*ParseSize("4096"), 4096u); }

TEST(ParseSizeTest, BinarySuffixes) {
  EXPECT_EQ(*ParseSize("64KiB"), 64u * 1024);
  EXPECT_EQ(*ParseSize("64MiB"), 64u << 20);
  EXPECT_EQ(*ParseSize("1GiB"), 1ull << 30);
  EXPECT_EQ(*ParseSize("2T"), 2ull << 40);
  EXPECT_EQ(*ParseSize("512B"), 512u);
}

TEST(ParseSizeTest, DecimalSuffixes) {
  EXPECT_EQ(*ParseSize("1MB"), 1000000u);
  EXPECT_EQ(*ParseSize("10GB"), 10000000000ull);
}

TEST(ParseSizeTest, Fractions) {
  EXPECT_EQ(*ParseSize("1.5GiB"), 3ull << 29);
  EXPECT_FALSE(ParseSize("1.3B").ok());
}

TEST(ParseSizeTest, RejectsGarbage) {
  EXPECT_FALSE(ParseSize("").ok());
  EXPECT_FALSE(ParseSize("-1").ok());
  EXPECT_FALSE(ParseSize("GiB").ok());
  EXPECT_FALSE(ParseSize("12XB").ok());
  EXPECT_FALSE(ParseSize("1..2").ok());
}

TEST(ParseSizeTest, RejectsOverflow) {
  EXPECT_FALSE(ParseSize("18446744073709551616").ok());
  EXPECT_FALSE(ParseSize("20000PiB").ok());
  EXPECT_EQ(*ParseSize("18446744073709551615"), 18446744073709551615ull);
}

TEST(ParseSizeTest, ErrorNamesInput) {
  auto r = ParseSize("12XB");
  EXPECT_NE(r.status().message().find("12XB"), absl::string_view::npos);
}

TEST(FormatSizeTest, ExactUnits) {
  EXPECT_EQ(FormatSize(1ull << 30), "1GiB");
  EXPECT_EQ(FormatSize(4096), "4KiB");
  EXPECT_EQ(FormatSize(100), "100B");
  EXPECT_EQ(FormatSize(3ull << 29), "1536MiB");
}

}  // namespace
}  // namespace nbdmgr
