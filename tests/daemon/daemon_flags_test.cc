#include "lib/daemon/daemon_flags.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>

namespace nbdmgr {
namespace {

absl::StatusOr<DaemonFlags> Parse(std::vector<const char*> args) {
  args.insert(args.begin(), "nbdmgrd");
  return ParseDaemonFlags(static_cast<int>(args.size()), args.data());
}

TEST(DaemonFlagsTest, Defaults) {
  auto f = Parse({});
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(f->config.nbd_listen.size(), 1u);
  EXPECT_EQ(f->config.nbd_listen[0].ToString(), "tcp:127.0.0.1:10809");
  EXPECT_EQ(f->config.drain_timeout, std::chrono::seconds(30));
  EXPECT_EQ(f->config.open_timeout, std::chrono::seconds(60));
  // Bounded by default.
  EXPECT_EQ(f->config.memory_cap_bytes, DefaultMemoryCap());
  EXPECT_GT(f->config.memory_cap_bytes, 0u);
  EXPECT_LE(f->config.memory_cap_bytes, uint64_t{1} << 30);
  EXPECT_EQ(f->config.connection_share_percent, 25u);
  EXPECT_EQ(f->config.connection_memory_bytes, 16u << 20);
  EXPECT_EQ(f->config.stall_timeout, std::chrono::seconds(30));
}

TEST(DaemonFlagsTest, LivenessFlags) {
  auto f = Parse({"--memory-cap", "none", "--connection-share", "10%",
                  "--stall-timeout", "2m", "--connection-memory", "none"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->config.connection_memory_bytes, 0u);
  EXPECT_EQ(f->config.memory_cap_bytes, 0u);
  EXPECT_EQ(f->config.connection_share_percent, 10u);
  EXPECT_EQ(f->config.stall_timeout, std::chrono::minutes(2));
  f = Parse({"--memory-cap", "256MiB", "--memory-cap", "auto",
             "--stall-timeout", "0"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->config.memory_cap_bytes, DefaultMemoryCap());
  EXPECT_EQ(f->config.stall_timeout.count(), 0);
}

TEST(DaemonFlagsTest, FullCommandLine) {
  auto f = Parse({"--nbd-listen", "tcp:127.0.0.1:10809",
                  "--nbd-listen=unix:/run/x.sock", "--export",
                  "name=disk0,backend=file,path=/var/lib/disk0.img",
                  "--export=name=scratch,backend=memory,size=1GiB",
                  "--default-export", "scratch", "--drain-timeout", "5s",
                  "--io-threads", "2", "--log-level", "debug"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->config.nbd_listen.size(), 2u);
  EXPECT_EQ(f->config.exports.size(), 2u);
  EXPECT_EQ(f->config.default_export, "scratch");
  EXPECT_EQ(f->config.drain_timeout, std::chrono::seconds(5));
  EXPECT_EQ(f->config.io_threads, 2);
}

TEST(DaemonFlagsTest, DefaultExportIsFirst) {
  auto f = Parse({"--export", "name=a,backend=null,size=1M", "--export",
                  "name=b,backend=null,size=1M"});
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->config.default_export, "a");
}

TEST(DaemonFlagsTest, HelpAndVersion) {
  EXPECT_TRUE(Parse({"--help"})->help);
  EXPECT_TRUE(Parse({"--version"})->version);
  EXPECT_NE(DaemonUsage().find("--nbd-listen"), std::string::npos);
}

TEST(DaemonFlagsTest, ErrorsNameTheFlag) {
  struct Case {
    std::vector<const char*> args;
    const char* mentions;
  } cases[] = {
      {{"--bogus"}, "unknown flag --bogus"},
      {{"--nbd-listen"}, "missing value"},
      {{"--nbd-listen", "ftp:x"}, "--nbd-listen"},
      {{"--export", "name=a"}, "--export"},
      {{"--export", "name=a,backend=null,size=1M", "--export",
        "name=a,backend=null,size=1M"},
       "declared twice"},
      {{"--default-export", "x"}, "no --export named"},
      {{"--io-threads", "many"}, "--io-threads"},
      {{"--drain-timeout", "soon"}, "--drain-timeout"},
      {{"--log-level", "loud"}, "--log-level"},
      {{"--memory-cap", "lots"}, "(or none, auto)"},
      {{"--connection-share", "0"}, "--connection-share"},
      {{"--connection-memory", "big"}, "(or none)"},
      {{"--connection-share", "101"}, "percentage from 1 to 100"},
      {{"--stall-timeout", "forever"}, "--stall-timeout"},
      {{"--stall-timeout", "25h"}, "at most 24h"},
      {{"positional"}, "unexpected argument"},
  };
  for (const Case& c : cases) {
    auto f = Parse(c.args);
    ASSERT_FALSE(f.ok()) << c.mentions;
    EXPECT_NE(f.status().message().find(c.mentions), absl::string_view::npos)
        << f.status().message();
  }
}

// A config file holding `text`, removed at the end of the test. Each test
// gets its own name: ctest runs the tests of this fixture in parallel.
class ConfigFileFlagsTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& text) {
    std::string tmpl = ::testing::TempDir() + "nbdmgrd_flags_test.XXXXXX";
    int fd = mkstemp(tmpl.data());
    EXPECT_GE(fd, 0);
    if (fd >= 0) close(fd);
    path_ = tmpl;
    std::ofstream(path_) << text;
    return path_;
  }
  void TearDown() override {
    if (!path_.empty()) std::remove(path_.c_str());
  }

 private:
  std::string path_;
};

TEST_F(ConfigFileFlagsTest, FlagsOverrideTheFilesValues) {
  const std::string conf = Write(R"pb(
    io_threads: 4
    memory_cap_bytes: 1000
    log_level: "debug"
    metrics_listen: "127.0.0.1:1"
    tls { cert_file: "/c" key_file: "/k" }
  )pb");
  auto f = Parse({"--config", conf.c_str(), "--io-threads", "0",
                  "--memory-cap=auto", "--tls-cert", "/c2"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->config_file, conf);
  EXPECT_EQ(f->config.io_threads, 0);  // a zero from a flag still overrides
  EXPECT_EQ(f->config.memory_cap_bytes, DefaultMemoryCap());
  EXPECT_EQ(f->config.tls.cert_file, "/c2");
  EXPECT_EQ(f->config.tls.key_file, "/k");  // the file's, not replaced
  EXPECT_EQ(f->config.log_level, "debug");  // no flag: the file's
  EXPECT_EQ(f->config.metrics_listen, "127.0.0.1:1");
}

TEST_F(ConfigFileFlagsTest, ListFlagsReplaceTheFilesListsExportsAdd) {
  const std::string conf = Write(R"pb(
    nbd_listen: "tcp:0.0.0.0:1"
    nbd_listen: "unix:/tmp/a.sock"
    allow_path: "/srv"
    exports {
      name: "file"
      null { size_bytes: 4096 }
    }
  )pb");
  auto f = Parse({"--nbd-listen", "tcp:127.0.0.1:2", "--config", conf.c_str(),
                  "--export", "name=flag,backend=null,size=1M"});
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->config.nbd_listen.size(), 1u);
  EXPECT_EQ(f->config.nbd_listen[0].ToString(), "tcp:127.0.0.1:2");
  EXPECT_EQ(f->config.allow_paths, std::vector<std::string>{"/srv"});
  ASSERT_EQ(f->config.exports.size(), 2u);
  EXPECT_EQ(f->config.exports[0].name, "file");
  EXPECT_EQ(f->config.exports[1].name, "flag");
  EXPECT_EQ(f->config.default_export, "file");
}

TEST_F(ConfigFileFlagsTest, FileErrorsNameTheFile) {
  const std::string conf = Write("log_level: \"loud\"\n");
  auto f = Parse({"--config", conf.c_str()});
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()),
              ::testing::HasSubstr(conf + ": log_level (--log-level)"));
  // The flag's value replaces the bad one.
  EXPECT_TRUE(Parse({"--config", conf.c_str(), "--log-level", "warn"}).ok());
  f = Parse({"--config", "/nonexistent.conf"});
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()),
              ::testing::HasSubstr("/nonexistent.conf: cannot read"));
  f = Parse({"--config", conf.c_str(), "--config", conf.c_str()});
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()),
              ::testing::HasSubstr("--config: given more than once"));
}

TEST(DaemonFlagsTest, QosGroupsAndExportLimits) {
  auto f =
      Parse({"--qos-group", "name=tenant1,iops=5000,bandwidth=200MiB",
             "--qos-group=name=tenant2", "--export",
             "name=a,backend=null,size=1M,iops-read=10,qos-group=tenant1"});
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->config.qos_groups.size(), 2u);
  EXPECT_EQ(f->config.qos_groups[0].name, "tenant1");
  EXPECT_EQ(f->config.qos_groups[0].limits[QosLimitKind::kIopsTotal].rate,
            5000u);
  EXPECT_EQ(f->config.qos_groups[0].limits[QosLimitKind::kBpsTotal].rate,
            200ull << 20);
  EXPECT_EQ(f->config.qos_groups[1].name, "tenant2");
  EXPECT_FALSE(f->config.qos_groups[1].limits.any());
  ASSERT_EQ(f->config.exports.size(), 1u);
  EXPECT_EQ(f->config.exports[0].qos_group, "tenant1");
  EXPECT_EQ(f->config.exports[0].qos[QosLimitKind::kIopsRead].rate, 10u);
  // --check-config shows them.
  const std::string d = DescribeConfig(f->config);
  EXPECT_THAT(d, ::testing::HasSubstr(
                     "qos group: tenant1 (iops=5000,bandwidth=200MiB)"));
  EXPECT_THAT(d, ::testing::HasSubstr("qos group: tenant2 (no limits)"));
  EXPECT_THAT(d, ::testing::HasSubstr("iops-read=10, QoS group tenant1"));
}

TEST_F(ConfigFileFlagsTest, QosGroupFlagsAddToTheFilesGroups) {
  const std::string conf = Write(R"pb(
    qos_groups {
      name: "qosGroups/file1"
      limits { iops_total { rate: 100 burst: 10 } }
    }
    qos_groups { name: "file2" }
  )pb");
  auto f = Parse({"--config", conf.c_str(), "--qos-group",
                  "name=flag,bandwidth-write=1MiB"});
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->config.qos_groups.size(), 3u);
  EXPECT_EQ(f->config.qos_groups[0].name, "file1");
  EXPECT_EQ(f->config.qos_groups[0].limits[QosLimitKind::kIopsTotal],
            (RateLimit{100, 10}));
  EXPECT_EQ(f->config.qos_groups[1].name, "file2");
  EXPECT_EQ(f->config.qos_groups[2].name, "flag");
  EXPECT_EQ(f->config.qos_groups[2].limits[QosLimitKind::kBpsWrite].rate,
            1u << 20);
  // A flag naming a group of the file is a duplicate.
  f = Parse({"--config", conf.c_str(), "--qos-group", "name=file2"});
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()),
              ::testing::HasSubstr("QoS group \"file2\" is declared twice"));
}

TEST(DaemonFlagsTest, EqualsFormTakesTheValue) {
  auto f = Parse({"--io-threads=3", "--state-dir=none", "--log-level=warn",
                  "--default-export=", "--export=name=a,backend=null,size=1M",
                  "--control-insecure", "--control-listen=tcp:127.0.0.1:0"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->config.io_threads, 3);
  EXPECT_EQ(f->config.state_dir, "");
  EXPECT_EQ(f->config.log_level, "warn");
  EXPECT_EQ(f->config.default_export, "");  // given empty: no default export
  EXPECT_TRUE(f->config.control_insecure);
}

TEST(DaemonFlagsTest, EveryValueFlagSetsItsField) {
  auto f = Parse({"--nbd-listen",
                  "unix:/tmp/n.sock",
                  "--export",
                  "name=a,backend=null,size=1M,tls=require",
                  "--default-export",
                  "a",
                  "--max-connections",
                  "7",
                  "--max-exports",
                  "9",
                  "--memory-cap",
                  "64MiB",
                  "--connection-share",
                  "50%",
                  "--connection-memory",
                  "1MiB",
                  "--stall-timeout",
                  "1m",
                  "--handshake-timeout",
                  "2s",
                  "--idle-timeout",
                  "3s",
                  "--drain-timeout",
                  "4s",
                  "--tls-cert",
                  "/c",
                  "--tls-key",
                  "/k",
                  "--tls-ca",
                  "/ca",
                  "--tls-psk",
                  "/p",
                  "--control-listen",
                  "unix:/tmp/c.sock",
                  "--control-tls-cert",
                  "/cc",
                  "--control-tls-key",
                  "/ck",
                  "--control-tls-ca",
                  "/cca",
                  "--state-dir",
                  "/s",
                  "--allow-path",
                  "/a1",
                  "--allow-path",
                  "/a2",
                  "--metrics-listen",
                  "tcp:127.0.0.1:1",
                  "--request-stats",
                  "off",
                  "--log-level",
                  "error",
                  "--ready-file",
                  "/r",
                  "--io-threads",
                  "1",
                  "--blocking-threads",
                  "2",
                  "--open-timeout",
                  "5s"});
  ASSERT_TRUE(f.ok()) << f.status();
  const DaemonConfig& c = f->config;
  EXPECT_EQ(c.nbd_listen[0].ToString(), "unix:/tmp/n.sock");
  EXPECT_EQ(c.default_export, "a");
  EXPECT_EQ(c.max_connections, 7u);
  EXPECT_EQ(c.max_exports, 9u);
  EXPECT_EQ(c.memory_cap_bytes, 64u << 20);
  EXPECT_EQ(c.connection_share_percent, 50u);
  EXPECT_EQ(c.connection_memory_bytes, 1u << 20);
  EXPECT_EQ(c.stall_timeout, std::chrono::minutes(1));
  EXPECT_EQ(c.handshake_timeout, std::chrono::seconds(2));
  EXPECT_EQ(c.idle_timeout, std::chrono::seconds(3));
  EXPECT_EQ(c.drain_timeout, std::chrono::seconds(4));
  EXPECT_EQ(c.open_timeout, std::chrono::seconds(5));
  EXPECT_EQ(c.tls.cert_file, "/c");
  EXPECT_EQ(c.tls.key_file, "/k");
  EXPECT_EQ(c.tls.ca_file, "/ca");
  EXPECT_EQ(c.tls.psk_file, "/p");
  EXPECT_EQ(c.control_listen->ToString(), "unix:/tmp/c.sock");
  EXPECT_EQ(c.control_tls_cert, "/cc");
  EXPECT_EQ(c.control_tls_key, "/ck");
  EXPECT_EQ(c.control_tls_ca, "/cca");
  EXPECT_EQ(c.state_dir, "/s");
  EXPECT_EQ(c.allow_paths, (std::vector<std::string>{"/a1", "/a2"}));
  EXPECT_EQ(c.metrics_listen, "127.0.0.1:1");
  EXPECT_FALSE(c.request_stats);
  EXPECT_EQ(c.log_level, "error");
  EXPECT_EQ(c.ready_file, "/r");
  EXPECT_EQ(c.io_threads, 1);
  EXPECT_EQ(c.blocking_threads, 2);
}

TEST(DaemonFlagsTest, HelpListsEveryFlag) {
  const std::string help = DaemonUsage();
  for (const char* flag : {"--nbd-listen",
                           "--export",
                           "--qos-group",
                           "--default-export",
                           "--io-threads",
                           "--blocking-threads",
                           "--drain-timeout",
                           "--log-level",
                           "--ready-file",
                           "--memory-cap",
                           "--control-listen",
                           "--control-tls-cert",
                           "--control-tls-key",
                           "--control-tls-ca",
                           "--control-insecure",
                           "--state-dir",
                           "--allow-path",
                           "--metrics-listen",
                           "--request-stats",
                           "--tls-cert",
                           "--tls-key",
                           "--tls-ca",
                           "--tls-psk",
                           "--handshake-timeout",
                           "--idle-timeout",
                           "--max-connections",
                           "--max-exports",
                           "--stall-timeout",
                           "--connection-share",
                           "--connection-memory",
                           "--config",
                           "--check-config",
                           "--help",
                           "--version",
                           "buffer-strategy=",
                           "iops=N",
                           "bandwidth-read=SIZE",
                           "qos-group=NAME",
                           "QOS GROUP SPEC"}) {
    EXPECT_THAT(help, ::testing::HasSubstr(flag));
  }
}

TEST(DaemonFlagsTest, UnknownFlagsAndBadValuesNameTheFlag) {
  struct Case {
    std::vector<const char*> args;
    const char* message;
  } cases[] = {
      {{"--nbd-listen", "tcp:127.0.0.1:1", "--bogus=1"},
       "unknown flag --bogus (see --help)"},
      {{"-x"}, "unknown flag -x"},
      {{"--io-threads", "2000"},
       "--io-threads: expected a number from 0 to 1024, got \"2000\""},
      {{"--io-threads=many"},
       "--io-threads: expected a number from 0 to 1024, got \"many\""},
      {{"--max-exports", "0"}, "--max-exports: expected a count from 1 to"},
      {{"--max-connections", "-1"}, "--max-connections: expected a count"},
      {{"--request-stats", "maybe"}, "--request-stats: expected on or off"},
      {{"--state-dir", "relative"}, "--state-dir: must be an absolute path"},
      {{"--allow-path", "x"}, "--allow-path: must be an absolute directory"},
      {{"--control-listen", "ftp:x"}, "--control-listen: "},
      {{"--metrics-listen", "nowhere"}, "--metrics-listen: expected HOST:PORT"},
      {{"--export", "name=a,backend=memory"}, "needs a size"},
      {{"--export", "name=a,backend=null,size=1M,iops=lots"},
       "--export: export key iops: expected a count"},
      {{"--qos-group", "name=g,bandwidth=1Q"},
       "--qos-group: QoS group key bandwidth:"},
      {{"--qos-group", "iops=5"},
       "--qos-group: QoS group spec \"iops=5\": "
       "missing name="},
      {{"--qos-group", "name=g,iops-burst=5"},
       "--qos-group: QoS group g: iops burst needs a rate (iops is not set)"},
      {{"--qos-group", "name=g/h"}, "--qos-group: QoS group name \"g/h\""},
      {{"--qos-group", "name=g,colour=red"},
       "--qos-group: QoS group spec \"name=g,colour=red\": unknown key"},
      {{"--qos-group", "name=g", "--qos-group", "name=h,iops=1",
        "--qos-group=name=g,iops=2"},
       "--qos-group: QoS group \"g\" is declared twice"},
      {{"--qos-group"}, "--qos-group: missing value"},
      {{"--config"}, "--config: missing value"},
      {{"--log-level="}, "--log-level: unknown level \"\""},
  };
  for (const Case& c : cases) {
    auto f = Parse(c.args);
    ASSERT_FALSE(f.ok()) << c.message;
    EXPECT_THAT(std::string(f.status().message()),
                ::testing::HasSubstr(c.message));
  }
}

}  // namespace
}  // namespace nbdmgr
