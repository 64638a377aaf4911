// Export <-> ExportConfig / ExportInfo: the fields of overlays.

#include "lib/convert/proto_convert.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "absl/strings/match.h"

namespace nbdmgr {
namespace {

// An overlay as CreateExport gets it: created if missing, no size (it
// takes its base's).
v1::Export OverlayProto(const std::string& base, uint64_t cluster) {
  v1::Export p;
  v1::FileBackend* f = p.mutable_file();
  f->set_path("/srv/ov.img");
  f->set_create(true);
  f->set_base(base);
  f->set_cluster_size_bytes(cluster);
  return p;
}

TEST(ProtoConvertTest, OverlayConfigRoundTrips) {
  for (const std::string base : {"golden", "/srv/golden.img"}) {
    absl::StatusOr<ExportConfig> c =
        ExportConfigFromProto(OverlayProto(base, 128 * 1024), "ov");
    ASSERT_TRUE(c.ok()) << base << ": " << c.status();
    EXPECT_EQ(c->backend, BackendKind::kFile);
    EXPECT_EQ(c->path, "/srv/ov.img");
    EXPECT_EQ(c->base, base);
    EXPECT_EQ(c->cluster_size, 128u * 1024);
    EXPECT_TRUE(c->create);
    EXPECT_FALSE(c->size.has_value());

    // What the state store keeps loads back the same.
    v1::Export saved = ExportConfigToProto(*c);
    EXPECT_EQ(saved.file().base(), base);
    EXPECT_EQ(saved.file().cluster_size_bytes(), 128u * 1024);
    absl::StatusOr<ExportConfig> again = ExportConfigFromProto(saved, "ov");
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->base, base);
    EXPECT_EQ(again->cluster_size, 128u * 1024);
    EXPECT_TRUE(again->create);
    EXPECT_FALSE(again->size.has_value());
  }
}

TEST(ProtoConvertTest, OverlayClusterSizeZeroIsTheDefault) {
  absl::StatusOr<ExportConfig> c =
      ExportConfigFromProto(OverlayProto("golden", 0), "ov");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->cluster_size, 0u);
  EXPECT_EQ(ExportConfigToProto(*c).file().cluster_size_bytes(), 0u);
}

TEST(ProtoConvertTest, PlainFileHasNoBase) {
  v1::Export p;
  p.mutable_file()->set_path("/srv/disk.img");
  absl::StatusOr<ExportConfig> c = ExportConfigFromProto(p, "disk");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->base, "");
  EXPECT_EQ(c->cluster_size, 0u);
  EXPECT_EQ(ExportConfigToProto(*c).file().base(), "");
}

TEST(ProtoConvertTest, CreateNeedsASizeButForAnOverlay) {
  v1::Export p = OverlayProto("", 0);
  absl::StatusOr<ExportConfig> c = ExportConfigFromProto(p, "disk");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(c.status().message(), "file.size_bytes"))
      << c.status();
}

TEST(ProtoConvertTest, BadOverlayFieldsAreInvalidArgument) {
  struct Case {
    std::string base;
    uint64_t cluster;
    const char* says;
  };
  for (const Case& k : {
           Case{"golden", 4096 + 512, "cluster size"},
           Case{"golden", 2048, "cluster size"},
           Case{"golden", 4 * 1024 * 1024, "cluster size"},
           Case{"golden", uint64_t{1} << 32, "cluster_size_bytes"},
           Case{"golden", UINT64_MAX, "cluster_size_bytes"},
           Case{"ov", 0, "its own base"},
           Case{"bad name", 0, "base"},
           Case{"relative/path.img", 0, "base"},
       }) {
    absl::StatusOr<ExportConfig> c =
        ExportConfigFromProto(OverlayProto(k.base, k.cluster), "ov");
    ASSERT_FALSE(c.ok()) << k.base << " " << k.cluster;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(c.status().message(), k.says)) << c.status();
  }
  // A cluster size without a base is no overlay.
  v1::Export p = OverlayProto("", 64 * 1024);
  p.mutable_file()->set_size_bytes(1 << 20);
  EXPECT_EQ(ExportConfigFromProto(p, "disk").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ProtoConvertTest, InfoOfAnOverlayHasItsStatus) {
  ExportInfo info;
  info.config = *ExportConfigFromProto(OverlayProto("golden", 0), "ov");
  info.overlay = OverlayStats{.cluster_size = 65536,
                              .allocated_bytes = 3 * 65536,
                              .zero_bytes = 65536,
                              .copy_ups = 2};
  v1::Export p = ExportInfoToProto(info);
  ASSERT_TRUE(p.has_overlay());
  EXPECT_EQ(p.overlay().cluster_size_bytes(), 65536u);
  EXPECT_EQ(p.overlay().allocated_bytes(), 3u * 65536);
  EXPECT_EQ(p.overlay().zero_bytes(), 65536u);
  EXPECT_EQ(p.overlay().copy_ups(), 2u);
  EXPECT_EQ(p.overlays(), 0u);
  EXPECT_EQ(p.file().base(), "golden");
}

TEST(ProtoConvertTest, InfoOfABaseCountsItsOverlays) {
  ExportInfo info;
  info.config.name = "golden";
  info.config.backend = BackendKind::kFile;
  info.config.path = "/srv/golden.img";
  info.overlays = 3;
  v1::Export p = ExportInfoToProto(info);
  EXPECT_FALSE(p.has_overlay());
  EXPECT_EQ(p.overlays(), 3u);
}

}  // namespace
}  // namespace nbdmgr
