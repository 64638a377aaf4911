#include "lib/daemon/config_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "lib/daemon/daemon_config.h"

namespace nbdmgr {
namespace {

using ::testing::HasSubstr;
using ::testing::Pair;

TEST(ConfigFileTest, FieldsBecomeTheFlagsTheyStandFor) {
  auto c = ParseConfigFile("f.conf", R"pb(
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
  EXPECT_THAT(c->flags,
              ::testing::ElementsAre(Pair("--nbd-listen", "tcp:127.0.0.1:1"),
                                     Pair("--nbd-listen", "unix:/tmp/x.sock"),
                                     Pair("--drain-timeout", "2500ms"),
                                     Pair("--control-listen", "none"),
                                     Pair("--request-stats", "off"),
                                     Pair("--tls-psk", "/etc/k.psk"),
                                     Pair("--max-connections", "0")));
  ASSERT_EQ(c->exports.size(), 2u);
  EXPECT_EQ(c->exports[0].name, "a");
  EXPECT_EQ(c->exports[1].name, "b");
  EXPECT_TRUE(c->exports[1].read_only);
}

TEST(ConfigFileTest, SyntaxErrorsNameFileLineAndColumn) {
  auto c = ParseConfigFile("f.conf", "nbd_listen: \"x\"\n  nope: 3\n");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("f.conf: line 2:"));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("nope"));
}

TEST(ConfigFileTest, BadExportNamesTheExport) {
  auto c = ParseConfigFile("f.conf", R"pb(
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

// A config file of nbdmgrd 0.1, with the enum value names of that version
// (`buffer_strategy: FIXED`, `tls: TLS_REQUIRE`, `state: ACTIVE`), loads
// with every export's fields.
TEST(ConfigFileTest, OldEnumValueNamesStillLoad) {
  auto c = LoadConfigFile(
      absl::StrCat(NBDMGR_TESTS_DIR, "/daemon/fixtures/old-names.conf"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->flags,
              ::testing::Contains(Pair("--tls-psk", "/etc/nbdmgr/keys.psk")));
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
