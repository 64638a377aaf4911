#include "lib/convert/bitmap_convert.h"

#include <gtest/gtest.h>

namespace nbdmgr {
namespace {

TEST(BitmapConvertTest, InfoToProtoKeepsEveryField) {
  BitmapInfo info;
  info.name = "daily.1";
  info.granularity = 65536;
  info.active = false;
  info.consistent = false;
  info.inconsistent_reason = "the daemon crashed";
  info.dirty_bytes = 3 << 16;
  info.memory_bytes = 2048;

  v1::Bitmap p = BitmapInfoToProto("vm1", info);
  EXPECT_EQ(p.name(), "exports/vm1/bitmaps/daily.1");
  EXPECT_EQ(p.granularity_bytes(), 65536u);
  EXPECT_FALSE(p.active());
  EXPECT_FALSE(p.consistent());
  EXPECT_EQ(p.inconsistent_reason(), "the daemon crashed");
  EXPECT_EQ(p.dirty_bytes(), 3u << 16);
  EXPECT_EQ(p.memory_bytes(), 2048u);
}

TEST(BitmapConvertTest, ResourceNameRoundTrips) {
  std::string name = BitmapResourceName("vm:1", "b-2_x.y");
  EXPECT_EQ(name, "exports/vm:1/bitmaps/b-2_x.y");
  absl::StatusOr<BitmapRef> ref = BitmapRefFromName(name);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->export_id, "vm:1");
  EXPECT_EQ(ref->bitmap, "b-2_x.y");
}

TEST(BitmapConvertTest, MalformedNamesAreInvalidArgument) {
  for (const char* name :
       {"", "exports/vm1", "exports/vm1/bitmaps/", "exports//bitmaps/b",
        "exports/bitmaps/b", "export/vm1/bitmaps/b", "vm1/bitmaps/b",
        "exports/vm1/bitmap/b", "exports/a/b/bitmaps/c",
        "exports/vm1/bitmaps/b/c", "exports/vm1/bitmaps/b/bitmaps/c",
        "exports/vm1/bitmaps/-b", "exports/-vm1/bitmaps/b",
        "exports/vm1/bitmaps/b c"}) {
    absl::StatusOr<BitmapRef> ref = BitmapRefFromName(name);
    EXPECT_EQ(ref.status().code(), absl::StatusCode::kInvalidArgument) << name;
  }
}

TEST(BitmapConvertTest, TooLongBitmapIdIsInvalidArgument) {
  EXPECT_TRUE(
      BitmapRefFromName("exports/e/bitmaps/" + std::string(128, 'b')).ok());
  EXPECT_EQ(BitmapRefFromName("exports/e/bitmaps/" + std::string(129, 'b'))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace nbdmgr
