#include "lib/daemon/daemon_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace nbdmgr {
namespace {

using ::testing::HasSubstr;

ExportConfig Memory(const std::string& name) {
  ExportConfig e;
  e.name = name;
  e.size = 1 << 20;
  return e;
}

TEST(DaemonConfigFromMergedTest, EmptyIsTheDefaults) {
  auto c = DaemonConfigFromMerged(MergedConfig{});
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->nbd_listen.size(), 1u);
  EXPECT_EQ(c->nbd_listen[0].ToString(), "tcp:127.0.0.1:10809");
  EXPECT_EQ(c->log_level, "info");
  EXPECT_EQ(c->max_exports, kDefaultMaxExports);
  EXPECT_EQ(c->handshake_timeout, std::chrono::seconds(10));
  EXPECT_TRUE(c->default_export.empty());
}

TEST(DaemonConfigFromMergedTest, ErrorsNameTheFlagOrTheFileField) {
  MergedConfig m;
  m.settings.set_connection_share_percent(101);
  m.file = "f.conf";
  auto c = DaemonConfigFromMerged(m);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("f.conf: connection_share_percent (--connection-share)"
                        ": expected a percentage from 1 to 100"));
  m.from_flags.add_paths("connection_share_percent");
  c = DaemonConfigFromMerged(m);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              ::testing::StartsWith("--connection-share: expected"));
}

TEST(DaemonConfigFromMergedTest, FlagExportsFollowTheFiles) {
  MergedConfig m;
  v1::Export* e = m.settings.add_exports();
  e->set_name("exports/file");
  e->mutable_null()->set_size_bytes(4096);
  m.flag_exports = {Memory("flag")};
  auto c = DaemonConfigFromMerged(m);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->exports.size(), 2u);
  EXPECT_EQ(c->exports[0].name, "file");
  EXPECT_EQ(c->exports[1].name, "flag");
  EXPECT_EQ(c->default_export, "file");
}

TEST(DaemonConfigFromMergedTest, EmptyDefaultExportFromAFlagMeansNone) {
  MergedConfig m;
  m.flag_exports = {Memory("a")};
  m.from_flags.add_paths("default_export");
  auto c = DaemonConfigFromMerged(m);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->default_export, "");
}

TEST(DaemonConfigFromMergedTest, EmptyLogLevelFromAFlagIsAnError) {
  MergedConfig m;
  m.from_flags.add_paths("log_level");
  auto c = DaemonConfigFromMerged(m);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("--log-level: unknown level"));
}

TEST(DaemonConfigFromMergedTest, RulesAcrossFields) {
  struct Case {
    std::function<void(MergedConfig&)> set;
    const char* mentions;
  } cases[] = {
      {[](MergedConfig& m) { m.settings.mutable_tls()->set_cert_file("/c"); },
       "--tls-cert and --tls-key go together"},
      {[](MergedConfig& m) { m.settings.mutable_tls()->set_ca_file("/ca"); },
       "--tls-ca: needs --tls-cert"},
      {[](MergedConfig& m) {
         m.settings.set_control_listen("tcp:127.0.0.1:1");
       },
       "--control-listen: a TCP control address needs"},
      {[](MergedConfig& m) {
         m.flag_exports = {Memory("a")};
         m.flag_exports[0].tls = TlsMode::kRequire;
       },
       "tls=require, which needs"},
      {[](MergedConfig& m) {
         m.settings.set_max_exports(1);
         m.flag_exports = {Memory("a"), Memory("b")};
       },
       "2 exports given, more than --max-exports 1"},
      {[](MergedConfig& m) {
         m.flag_exports = {Memory("a"), Memory("a")};
       },
       "declared twice"},
      {[](MergedConfig& m) { m.settings.set_default_export("x"); },
       "--default-export: no --export named \"x\""},
  };
  for (const Case& c : cases) {
    MergedConfig m;
    c.set(m);
    auto r = DaemonConfigFromMerged(m);
    ASSERT_FALSE(r.ok()) << c.mentions;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.mentions));
  }
}

}  // namespace
}  // namespace nbdmgr
