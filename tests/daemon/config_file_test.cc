#include "lib/daemon/config_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "lib/daemon/daemon_config.h"

namespace nbdmgr {
namespace {

using ::testing::HasSubstr;

// The configuration `text` stands for, alone (no flags).
absl::StatusOr<DaemonConfig> FromFile(const std::string& text) {
  absl::StatusOr<v1::DaemonConfig> p = ParseConfigFile("f.conf", text);
  if (!p.ok()) return p.status();
  MergedConfig m;
  m.settings = *std::move(p);
  m.file = "f.conf";
  return DaemonConfigFromMerged(m);
}

TEST(ConfigFileTest, FieldsSetWhatTheirFlagsSet) {
  auto c = FromFile(R"pb(
    nbd_listen: "tcp:127.0.0.1:1"
    nbd_listen: "unix:/tmp/x.sock"
    drain_timeout { seconds: 2 nanos: 500000000 }
    control_listen: "none"
    request_stats: false
    max_connections: 0
    tls { psk_file: "/etc/k.psk" }
    exports {
      name: "exports/a"
      memory { size_bytes: 1048576 }
    }
    exports {
      name: "b"
      null { size_bytes: 4096 }
      read_only: true
    }
  )pb");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->nbd_listen.size(), 2u);
  EXPECT_EQ(c->nbd_listen[0].ToString(), "tcp:127.0.0.1:1");
  EXPECT_EQ(c->nbd_listen[1].ToString(), "unix:/tmp/x.sock");
  EXPECT_EQ(c->drain_timeout, std::chrono::milliseconds(2500));
  EXPECT_FALSE(c->control_listen.has_value());
  EXPECT_FALSE(c->request_stats);
  EXPECT_EQ(c->tls.psk_file, "/etc/k.psk");
  EXPECT_EQ(c->max_connections, 0u);
  ASSERT_EQ(c->exports.size(), 2u);
  EXPECT_EQ(c->exports[0].name, "a");
  EXPECT_EQ(c->exports[1].name, "b");
  EXPECT_TRUE(c->exports[1].read_only);
  EXPECT_EQ(c->default_export, "a");
}

TEST(ConfigFileTest, UnsetFieldsKeepTheDefaults) {
  auto c = FromFile("log_level: \"\"\ndefault_export: \"\"\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->log_level, "info");
  EXPECT_EQ(c->memory_cap_bytes, DefaultMemoryCap());
  EXPECT_EQ(c->state_dir, "/var/lib/nbdmgr");
  EXPECT_EQ(c->metrics_listen, "127.0.0.1:9810");
  ASSERT_TRUE(c->control_listen.has_value());
  EXPECT_EQ(c->control_listen->ToString(), "unix:/run/nbdmgr/control.sock");
}

TEST(ConfigFileTest, SyntaxErrorsNameFileLineAndColumn) {
  auto c = ParseConfigFile("f.conf", "nbd_listen: \"x\"\n  nope: 3\n");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("f.conf: line 2:"));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("nope"));
}

TEST(ConfigFileTest, BadValuesNameFileFieldAndFlag) {
  auto c = FromFile("io_threads: 2000\n");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("f.conf: io_threads (--io-threads): expected a number "
                        "from 0 to 1024"));
  c = FromFile("stall_timeout { seconds: -1 }\n");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("f.conf: stall_timeout (--stall-timeout): duration"));
}

TEST(ConfigFileTest, BadExportNamesTheExport) {
  auto c = FromFile(R"pb(
    exports {
      name: "ok"
      memory { size_bytes: 1 }
    }
    exports {
      name: ""
      memory { size_bytes: 1 }
    }
  )pb");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("f.conf: exports[1]"));
}

TEST(ConfigFileTest, QosGroupsAndExportLimits) {
  auto c = FromFile(R"pb(
    qos_groups {
      name: "qosGroups/g1"
      limits {
        iops_total { rate: 5000 burst: 500 }
        bps_read { rate: 1048576 }
      }
    }
    qos_groups { name: "g2" }
    exports {
      name: "a"
      memory { size_bytes: 1048576 }
      qos { bps_write { rate: 4096 } }
      qos_group: "qosGroups/g1"
    }
    exports {
      name: "b"
      memory { size_bytes: 1048576 }
      qos_group: "g2"
    }
  )pb");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->qos_groups.size(), 2u);
  EXPECT_EQ(c->qos_groups[0].name, "g1");
  EXPECT_EQ(c->qos_groups[0].limits[QosLimitKind::kIopsTotal],
            (RateLimit{5000, 500}));
  EXPECT_EQ(c->qos_groups[0].limits[QosLimitKind::kBpsRead],
            (RateLimit{1048576, 0}));
  EXPECT_EQ(c->qos_groups[1].name, "g2");
  EXPECT_FALSE(c->qos_groups[1].limits.any());
  ASSERT_EQ(c->exports.size(), 2u);
  EXPECT_EQ(c->exports[0].qos[QosLimitKind::kBpsWrite].rate, 4096u);
  EXPECT_EQ(c->exports[0].qos_group, "g1");
  EXPECT_EQ(c->exports[1].qos_group, "g2");
}

TEST(ConfigFileTest, BadQosGroupsNameTheGroup) {
  struct Case {
    const char* text;
    const char* mentions;
  } cases[] = {
      {R"pb(qos_groups { name: "" })pb",
       "f.conf: qos_groups[0] (\"\"): QoS group name is empty"},
      {R"pb(qos_groups { name: "exports/x" })pb",
       "f.conf: qos_groups[0] (\"exports/x\"): QoS group name"},
      {R"pb(qos_groups { name: "ok" }
            qos_groups {
              name: "g"
              limits { iops_read { burst: 3 } }
            })pb",
       "f.conf: qos_groups[1] (\"g\"): QoS group g: iops-read burst needs"},
      {R"pb(qos_groups {
              name: "g"
              limits { bps_total { rate: 2000000000000 } }
            })pb",
       "bandwidth 2000000000000 is out of range"},
      {R"pb(qos_groups { name: "g" }
            qos_groups { name: "qosGroups/g" })pb",
       "f.conf: qos_groups (--qos-group): QoS group \"g\" is declared twice"},
      {R"pb(exports {
              name: "a"
              memory { size_bytes: 1 }
              qos { iops_write { burst: 1 } }
            })pb",
       "f.conf: exports[0] (\"a\"): "},
      {R"pb(exports {
              name: "a"
              memory { size_bytes: 1 }
              qos_group: "other/g"
            })pb",
       "f.conf: exports[0] (\"a\"): QoS group name"},
  };
  for (const Case& k : cases) {
    auto c = FromFile(k.text);
    ASSERT_FALSE(c.ok()) << k.text;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(k.mentions))
        << k.text;
  }
}

TEST(ConfigFileTest, OverlayExportsKeepTheirBaseAndClusterSize) {
  auto c = FromFile(R"pb(
    exports {
      name: "golden"
      file { path: "/srv/golden.img" }
    }
    exports {
      name: "ov"
      file {
        path: "/srv/ov.img"
        create: true
        base: "golden"
        cluster_size_bytes: 131072
      }
    }
    exports {
      name: "on-a-file"
      file { path: "/srv/ov2.img" base: "/srv/golden.img" }
    }
  )pb");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->exports.size(), 3u);
  EXPECT_EQ(c->exports[0].base, "");
  EXPECT_EQ(c->exports[1].base, "golden");
  EXPECT_EQ(c->exports[1].cluster_size, 131072u);
  EXPECT_TRUE(c->exports[1].create);
  EXPECT_EQ(c->exports[2].base, "/srv/golden.img");
  EXPECT_EQ(c->exports[2].cluster_size, 0u);
  // --check-config says which exports are overlays, and of what.
  EXPECT_THAT(DescribeConfig(*c),
              HasSubstr("export: ov (file /srv/ov.img, overlay of golden)"));

  c = FromFile(R"pb(
    exports {
      name: "ov"
      file { path: "/srv/ov.img" base: "golden" cluster_size_bytes: 1000 }
    }
  )pb");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("f.conf: exports[0] (\"ov\")"));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("cluster size"));
}

TEST(ConfigFileTest, UnreadableFileIsNamed) {
  auto c = LoadConfigFile("/nonexistent/nbdmgrd.conf");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("--config /nonexistent/nbdmgrd.conf: cannot read"));
}

// A config file of nbdmgrd 0.1, with the enum value names of that version
// (`buffer_strategy: FIXED`, `tls: TLS_REQUIRE`, `state: ACTIVE`), loads
// with every export's fields.
TEST(ConfigFileTest, OldEnumValueNamesStillLoad) {
  const std::string path =
      absl::StrCat(NBDMGR_TESTS_DIR, "/daemon/fixtures/old-names.conf");
  absl::StatusOr<v1::DaemonConfig> p = LoadConfigFile(path);
  ASSERT_TRUE(p.ok()) << p.status();
  MergedConfig m;
  m.settings = *std::move(p);
  m.file = path;
  absl::StatusOr<DaemonConfig> c = DaemonConfigFromMerged(m);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->tls.psk_file, "/etc/nbdmgr/keys.psk");
  ASSERT_EQ(c->exports.size(), 5u);
  const ExportConfig& fixed = c->exports[0];
  EXPECT_EQ(fixed.name, "fixed");
  EXPECT_EQ(fixed.backend, BackendKind::kMemory);
  EXPECT_EQ(fixed.size, 1u << 20);
  EXPECT_EQ(fixed.buffers.strategy, BufferStrategy::kFixed);
  EXPECT_EQ(fixed.tls, TlsMode::kOff);
  const ExportConfig& grow = c->exports[1];
  EXPECT_EQ(grow.name, "grow");
  EXPECT_EQ(grow.backend, BackendKind::kNull);
  EXPECT_EQ(grow.size, 2u << 20);
  EXPECT_EQ(grow.buffers.strategy, BufferStrategy::kGrow);
  EXPECT_EQ(grow.tls, TlsMode::kOptional);
  const ExportConfig& exact = c->exports[2];
  EXPECT_EQ(exact.name, "exact");
  EXPECT_EQ(exact.size, 4u << 20);
  EXPECT_EQ(exact.buffers.strategy, BufferStrategy::kExact);
  EXPECT_EQ(exact.tls, TlsMode::kRequire);
  const ExportConfig& pool = c->exports[3];
  EXPECT_EQ(pool.name, "pool");
  EXPECT_EQ(pool.buffers.strategy, BufferStrategy::kPool);
  EXPECT_EQ(pool.buffers.memory_cap_bytes, 8u << 20);
  EXPECT_EQ(pool.tls, TlsMode::kOff);
  const ExportConfig& stream = c->exports[4];
  EXPECT_EQ(stream.name, "stream");
  EXPECT_EQ(stream.backend, BackendKind::kFile);
  EXPECT_EQ(stream.path, "/var/lib/nbdmgr/disks/stream.img");
  EXPECT_EQ(stream.buffers.strategy, BufferStrategy::kStream);
  EXPECT_TRUE(stream.read_only);
}

}  // namespace
}  // namespace nbdmgr
