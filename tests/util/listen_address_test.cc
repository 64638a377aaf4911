#include "lib/util/listen_address.h"

#include <gtest/gtest.h>

namespace nbdmgr {
namespace {

TEST(ListenAddressTest, Tcp) {
  auto a = ParseListenAddress("tcp:127.0.0.1:10809");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->kind, ListenAddress::Kind::kTcp);
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 10809);
  EXPECT_EQ(a->ToString(), "tcp:127.0.0.1:10809");
}

TEST(ListenAddressTest, TcpIpv6) {
  auto a = ParseListenAddress("tcp:[::1]:0");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "::1");
  EXPECT_EQ(a->port, 0);
  EXPECT_EQ(a->ToString(), "tcp:[::1]:0");
}

TEST(ListenAddressTest, Unix) {
  auto a = ParseListenAddress("unix:/run/nbdmgr/nbd.sock");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->kind, ListenAddress::Kind::kUnix);
  EXPECT_EQ(a->path, "/run/nbdmgr/nbd.sock");
}

TEST(ListenAddressTest, Rejects) {
  for (const char* bad :
       {"", "tcp:", "tcp:host", "tcp::80", "tcp:h:99999", "tcp:h:x",
        "tcp:::1:80", "unix:", "unix:relative", "udp:1.2.3.4:5"}) {
    EXPECT_FALSE(ParseListenAddress(bad).ok()) << bad;
  }
  std::string long_path = "unix:/" + std::string(200, 'a');
  EXPECT_FALSE(ParseListenAddress(long_path).ok());
}

}  // namespace
}  // namespace nbdmgr
