// Export <-> ExportConfig / ExportInfo: the fields of overlays and QoS;
// QoS groups.

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

v1::Export MemoryProto() {
  v1::Export p;
  p.mutable_memory()->set_size_bytes(1 << 20);
  return p;
}

TEST(ProtoConvertTest, QosLimitsRoundTrip) {
  v1::Export p = MemoryProto();
  p.mutable_qos()->mutable_iops_total()->set_rate(5000);
  p.mutable_qos()->mutable_iops_total()->set_burst(500);
  p.mutable_qos()->mutable_iops_read()->set_rate(1);
  p.mutable_qos()->mutable_iops_write()->set_rate(2);
  p.mutable_qos()->mutable_bps_total()->set_rate(200 << 20);
  p.mutable_qos()->mutable_bps_read()->set_rate(3);
  p.mutable_qos()->mutable_bps_write()->set_rate(4);
  p.mutable_qos()->mutable_bps_write()->set_burst(8);
  p.set_qos_group("qosGroups/tenant1");
  absl::StatusOr<ExportConfig> c = ExportConfigFromProto(p, "vm1");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->qos[QosLimitKind::kIopsTotal], (RateLimit{5000, 500}));
  EXPECT_EQ(c->qos[QosLimitKind::kIopsRead], (RateLimit{1, 0}));
  EXPECT_EQ(c->qos[QosLimitKind::kIopsWrite], (RateLimit{2, 0}));
  EXPECT_EQ(c->qos[QosLimitKind::kBpsTotal], (RateLimit{200 << 20, 0}));
  EXPECT_EQ(c->qos[QosLimitKind::kBpsRead], (RateLimit{3, 0}));
  EXPECT_EQ(c->qos[QosLimitKind::kBpsWrite], (RateLimit{4, 8}));
  EXPECT_EQ(c->qos_group, "tenant1");
  v1::Export back = ExportConfigToProto(*c);
  EXPECT_EQ(back.qos().SerializeAsString(), p.qos().SerializeAsString());
  EXPECT_EQ(back.qos_group(), "qosGroups/tenant1");
  // Each limit lands in its own field.
  for (QosLimitKind k : kAllQosLimitKinds) {
    EXPECT_EQ(RateLimitOf(back.qos(), k).rate(), c->qos[k].rate)
        << FieldNameOf(k);
  }
}

TEST(ProtoConvertTest, NoQosIsUnsetAndABareGroupNameIsTaken) {
  absl::StatusOr<ExportConfig> c = ExportConfigFromProto(MemoryProto(), "a");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->qos.any());
  EXPECT_EQ(c->qos_group, "");
  v1::Export back = ExportConfigToProto(*c);
  EXPECT_FALSE(back.has_qos());
  EXPECT_EQ(back.qos_group(), "");
  v1::Export p = MemoryProto();
  p.set_qos_group("tenant1");
  c = ExportConfigFromProto(p, "a");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->qos_group, "tenant1");
}

TEST(ProtoConvertTest, BadQosFieldsAreInvalidArgument) {
  struct Case {
    void (*set)(v1::Export*);
    const char* mentions;
  } cases[] = {
      {[](v1::Export* p) { p->set_qos_group("exports/tenant1"); },
       "qosGroups/{group}"},
      {[](v1::Export* p) { p->set_qos_group("qosGroups/"); }, "empty"},
      {[](v1::Export* p) { p->set_qos_group("qosGroups/a b"); }, "only"},
      {[](v1::Export* p) {
         p->mutable_qos()->mutable_iops_read()->set_burst(5);
       },
       "iops-read burst needs"},
      {[](v1::Export* p) {
         p->mutable_qos()->mutable_bps_total()->set_rate(kMaxQosRate + 1);
       },
       "bandwidth"},
  };
  for (const Case& k : cases) {
    v1::Export p = MemoryProto();
    k.set(&p);
    absl::StatusOr<ExportConfig> c = ExportConfigFromProto(p, "a");
    ASSERT_FALSE(c.ok()) << k.mentions;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(c.status().message(), k.mentions))
        << c.status().message();
  }
}

TEST(ProtoConvertTest, QosGroupNames) {
  EXPECT_EQ(QosGroupResourceName("g"), "qosGroups/g");
  EXPECT_EQ(*QosGroupIdFromName("qosGroups/g"), "g");
  EXPECT_EQ(*QosGroupIdFromName("g"), "g");
  for (const char* bad :
       {"", "qosGroups/", "exports/g", "qosGroups/g/h", "qosGroups/-g"}) {
    EXPECT_EQ(QosGroupIdFromName(bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

TEST(ProtoConvertTest, QosGroupConfigAndInfo) {
  v1::QosGroup p;
  p.set_name("ignored");
  p.mutable_limits()->mutable_iops_write()->set_rate(10);
  p.mutable_limits()->mutable_iops_write()->set_burst(2);
  absl::StatusOr<QosGroupConfig> g = QosGroupConfigFromProto(p, "tenant1");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->name, "tenant1");
  EXPECT_EQ(g->limits[QosLimitKind::kIopsWrite], (RateLimit{10, 2}));
  v1::QosGroup back = QosGroupConfigToProto(*g);
  EXPECT_EQ(back.name(), "qosGroups/tenant1");
  EXPECT_EQ(back.limits().iops_write().rate(), 10u);
  EXPECT_EQ(back.limits().iops_write().burst(), 2u);
  EXPECT_FALSE(back.limits().has_iops_total());
  EXPECT_EQ(back.exports_size(), 0);
  // Bad names and limits.
  EXPECT_EQ(QosGroupConfigFromProto(p, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QosGroupConfigFromProto(p, "a/b").status().code(),
            absl::StatusCode::kInvalidArgument);
  p.mutable_limits()->mutable_iops_write()->set_rate(0);
  EXPECT_EQ(QosGroupConfigFromProto(p, "g").status().code(),
            absl::StatusCode::kInvalidArgument);  // a burst without a rate

  QosGroupInfo info;
  info.name = "tenant1";
  info.limits = g->limits;
  info.exports = {"vm1", "vm2"};
  info.persistent = true;
  info.stats = {
      .throttled_requests = 5, .throttled_ns = 1'500'000'000, .waiting = 2};
  v1::QosGroup out = QosGroupInfoToProto(info);
  EXPECT_EQ(out.name(), "qosGroups/tenant1");
  ASSERT_EQ(out.exports_size(), 2);
  EXPECT_EQ(out.exports(0), "exports/vm1");
  EXPECT_EQ(out.exports(1), "exports/vm2");
  EXPECT_TRUE(out.persistent());
  EXPECT_EQ(out.throttled_requests(), 5u);
  EXPECT_DOUBLE_EQ(out.throttled_seconds(), 1.5);
  EXPECT_EQ(out.waiting_requests(), 2u);
  EXPECT_EQ(out.limits().iops_write().burst(), 2u);
}

}  // namespace
}  // namespace nbdmgr
