#include "lib/daemon/config_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace nbdmgr
