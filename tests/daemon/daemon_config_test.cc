#include "lib/daemon/daemon_config.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace nbdmgr
