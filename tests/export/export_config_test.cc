#include "lib/export/export_config.h"

#include <gtest/gtest.h>

#include <span>

#include "absl/strings/str_cat.h"

namespace nbdmgr {
namespace {

// A spec ParseExportSpec must refuse, and what its message must mention.
struct RefusedSpec {
  const char* spec;
  const char* mentions;
};

// Each spec is InvalidArgument naming the problem.
void ExpectAllRefused(std::span<const RefusedSpec> cases) {
  for (const RefusedSpec& c : cases) {
    auto r = ParseExportSpec(c.spec);
    ASSERT_FALSE(r.ok()) << c.spec;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.mentions), absl::string_view::npos)
        << c.spec << " -> " << r.status().message();
  }
}

TEST(ParseExportSpecTest, Memory) {
  auto c = ParseExportSpec("name=scratch,backend=memory,size=1GiB");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->name, "scratch");
  EXPECT_EQ(c->backend, BackendKind::kMemory);
  EXPECT_EQ(*c->size, 1ull << 30);
  EXPECT_FALSE(c->read_only);
}

TEST(ParseExportSpecTest, FileWithAllKeys) {
  auto c = ParseExportSpec(
      "name=disk0,backend=file,path=/var/lib/disk0.img,read-only=true,"
      "description=VM disk\\, primary");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->path, "/var/lib/disk0.img");
  EXPECT_TRUE(c->read_only);
  EXPECT_EQ(c->description, "VM disk, primary");
  EXPECT_FALSE(c->size.has_value());
}

TEST(ParseExportSpecTest, RbdWithAllKeys) {
  auto c = ParseExportSpec(
      "name=vm1,backend=rbd,pool=rbd,image=vm1,namespace=tenant-a,"
      "ceph-conf=/etc/ceph/other.conf,ceph-user=nbdmgr,size=10GiB");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->backend, BackendKind::kRbd);
  EXPECT_EQ(NameOf(c->backend), "rbd");
  EXPECT_EQ(c->rbd.pool, "rbd");
  EXPECT_EQ(c->rbd.image, "vm1");
  EXPECT_EQ(c->rbd.ns, "tenant-a");
  EXPECT_EQ(c->rbd.ceph_conf, "/etc/ceph/other.conf");
  EXPECT_EQ(c->rbd.ceph_user, "nbdmgr");
  EXPECT_EQ(*c->size, 10ull << 30);
  EXPECT_FALSE(c->read_only);
  // A snapshot export is read-only without saying so.
  c = ParseExportSpec("name=gold,backend=rbd,pool=p,image=i,snapshot=s1");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rbd.snapshot, "s1");
  EXPECT_TRUE(c->read_only);
}

TEST(ParseExportSpecTest, RbdErrorsNameTheProblem) {
  const RefusedSpec cases[] = {
      {"name=a,backend=rbd,image=i", "pool is required"},
      {"name=a,backend=rbd,pool=p", "image is required"},
      {"name=a,backend=rbd,pool=p/q,image=i", "may not contain"},
      {"name=a,backend=rbd,pool=p,image=i@s", "may not contain"},
      {"name=a,backend=rbd,pool=p,image=i,ceph-user=client/x", "rados id"},
      {"name=a,backend=rbd,pool=p,image=i,ceph-conf=ceph.conf", "absolute"},
      {"name=a,backend=rbd,pool=p,image=i,path=/x", "only for the file"},
      {"name=a,backend=rbd,pool=p,image=i,io=threads", "only for the file"},
      {"name=a,backend=rbd,pool=p,image=i,size=0", "size must be > 0"},
      {"name=a,backend=rbd,pool=p,image=i,snapshot=s,read-only=false",
       "read-only"},
      {"name=a,backend=rbd,pool=p,image=i,snapshot=s,size=1G", "no size"},
      {"name=a,backend=memory,size=1M,pool=p", "only for the rbd backend"},
      {"name=a,backend=file,path=/x,image=i", "only for the rbd backend"},
  };
  ExpectAllRefused(cases);
}

TEST(ParseExportSpecTest, StallTimeoutOverridesTheDaemons) {
  auto c = ParseExportSpec("name=a,backend=memory,size=1M");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->stall_timeout.has_value());  // the daemon's
  c = ParseExportSpec("name=a,backend=memory,size=1M,stall-timeout=5s");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->stall_timeout, std::chrono::seconds(5));
  c = ParseExportSpec("name=a,backend=memory,size=1M,stall-timeout=0");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->stall_timeout, std::chrono::milliseconds(0));  // never
}

TEST(ParseExportSpecTest, ErrorsNameTheProblem) {
  const RefusedSpec cases[] = {
      {"backend=memory,size=1GiB", "missing name"},
      {"name=a,size=1GiB", "missing backend"},
      {"name=a,backend=tape", "unknown backend"},
      {"name=a,backend=memory", "needs a size"},
      {"name=a,backend=memory,size=0", "needs a size"},
      {"name=a,backend=memory,size=lots", "size"},
      {"name=a,backend=file", "needs a path"},
      {"name=a,backend=file,path=rel.img", "absolute"},
      {"name=a,backend=memory,size=1M,colour=red", "unknown key"},
      {"name=a,backend=memory,size=1M,read-only=maybe", "true or false"},
      {"name=,backend=memory,size=1M", "empty"},
      {"name=a/b,backend=memory,size=1M", "only letters"},
      {"name=a,backend=memory,size=1M,path=/x", "only for the file"},
      {"name=a,backend=memory,junk", "not key=value"},
      {"name=a,backend=memory,size=1M,stall-timeout=soon", "stall-timeout"},
      {"name=a,backend=memory,size=1M,stall-timeout=48h", "between 0 and 24h"},
  };
  ExpectAllRefused(cases);
}

TEST(ParseExportSpecTest, BlockSizes) {
  auto c = ParseExportSpec(
      "name=a,backend=memory,size=1MiB,min-block-size=512,preferred-block-size="
      "4KiB,"
      "max-payload=1MiB");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->block_sizes.minimum, 512u);
  EXPECT_EQ(c->block_sizes.preferred, 4096u);
  EXPECT_EQ(c->block_sizes.maximum_payload, 1u << 20);
}

TEST(ParseExportSpecTest, QosKeys) {
  auto c = ParseExportSpec(
      "name=a,backend=memory,size=1MiB,iops=5000,iops-burst=500,"
      "iops-read=3000,iops-write=2000,iops-write-burst=20,"
      "bandwidth=200MiB,bandwidth-burst=16MiB,bandwidth-read=100MB,"
      "bandwidth-read-burst=1MiB,bandwidth-write=4096,qos-group=tenant1");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->qos[QosLimitKind::kIopsTotal], (RateLimit{5000, 500}));
  EXPECT_EQ(c->qos[QosLimitKind::kIopsRead], (RateLimit{3000, 0}));
  EXPECT_EQ(c->qos[QosLimitKind::kIopsWrite], (RateLimit{2000, 20}));
  EXPECT_EQ(c->qos[QosLimitKind::kBpsTotal],
            (RateLimit{200ull << 20, 16ull << 20}));
  EXPECT_EQ(c->qos[QosLimitKind::kBpsRead], (RateLimit{100000000, 1 << 20}));
  EXPECT_EQ(c->qos[QosLimitKind::kBpsWrite], (RateLimit{4096, 0}));
  EXPECT_EQ(c->qos_group, "tenant1");
}

TEST(ParseExportSpecTest, NoQosKeysIsUnlimited) {
  auto c = ParseExportSpec("name=a,backend=memory,size=1MiB");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->qos.any());
  EXPECT_EQ(c->qos_group, "");
  // 0 is no limit.
  c = ParseExportSpec("name=a,backend=memory,size=1MiB,iops=0,bandwidth=0");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->qos.any());
}

TEST(ParseExportSpecTest, QosErrorsNameTheKey) {
  const RefusedSpec cases[] = {
      {"name=a,backend=memory,size=1M,iops=fast", "export key iops:"},
      {"name=a,backend=memory,size=1M,iops=-1", "export key iops:"},
      {"name=a,backend=memory,size=1M,iops=1.5", "export key iops:"},
      {"name=a,backend=memory,size=1M,iops-read=10k", "export key iops-read:"},
      {"name=a,backend=memory,size=1M,iops-write-burst=x",
       "export key iops-write-burst:"},
      {"name=a,backend=memory,size=1M,bandwidth=lots", "export key bandwidth:"},
      {"name=a,backend=memory,size=1M,bandwidth-write-burst=1XB",
       "export key bandwidth-write-burst:"},
      // Ranges and rules: ValidateQosLimits names the limit.
      {"name=a,backend=memory,size=1M,iops-burst=10", "iops burst needs"},
      {"name=a,backend=memory,size=1M,bandwidth-read-burst=1M",
       "bandwidth-read burst needs"},
      {"name=a,backend=memory,size=1M,iops=2000000000000", "iops"},
      {"name=a,backend=memory,size=1M,bandwidth=2TiB", "out of range"},
      {"name=a,backend=memory,size=1M,iops=1,iops-burst=2000000000000",
       "iops burst"},
      {"name=a,backend=memory,size=1M,qos-group=a/b", "QoS group name"},
      {"name=a,backend=memory,size=1M,iopsy=1", "unknown key \"iopsy\""},
      {"name=a,backend=memory,size=1M,iops-total=1", "unknown key"},
      {"name=a,backend=memory,size=1M,iops-burst-burst=1", "unknown key"},
  };
  ExpectAllRefused(cases);
  // The unknown-key message lists the QoS keys.
  auto r = ParseExportSpec("name=a,backend=memory,size=1M,colour=red");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("qos-group"), absl::string_view::npos);
  EXPECT_NE(r.status().message().find("bandwidth-write"),
            absl::string_view::npos);
}

TEST(ParseQosGroupSpecTest, NameAndLimits) {
  auto g = ParseQosGroupSpec(
      "name=tenant1,iops=5000,bandwidth=200MiB,bandwidth-burst=1GiB,"
      "iops-read=100,iops-read-burst=10,iops-write=50,bandwidth-read=1M,"
      "bandwidth-write=2M,bandwidth-write-burst=4M,iops-write-burst=7,"
      "iops-burst=9,bandwidth-read-burst=3M");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->name, "tenant1");
  EXPECT_EQ(g->limits[QosLimitKind::kIopsTotal], (RateLimit{5000, 9}));
  EXPECT_EQ(g->limits[QosLimitKind::kIopsRead], (RateLimit{100, 10}));
  EXPECT_EQ(g->limits[QosLimitKind::kIopsWrite], (RateLimit{50, 7}));
  EXPECT_EQ(g->limits[QosLimitKind::kBpsTotal],
            (RateLimit{200ull << 20, 1ull << 30}));
  EXPECT_EQ(g->limits[QosLimitKind::kBpsRead], (RateLimit{1 << 20, 3 << 20}));
  EXPECT_EQ(g->limits[QosLimitKind::kBpsWrite], (RateLimit{2 << 20, 4 << 20}));
  // A group without limits is allowed (limits can be set over the API).
  g = ParseQosGroupSpec("name=empty");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_FALSE(g->limits.any());
  // Empty parts are skipped, as in --export.
  g = ParseQosGroupSpec("iops=1,,name=b,");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->name, "b");
}

TEST(ParseQosGroupSpecTest, ErrorsNameTheProblem) {
  const struct {
    const char* spec;
    const char* mentions;
  } cases[] = {
      {"iops=5", "missing name="},
      {"", "missing name="},
      {"name=", "QoS group name is empty"},
      {"name=-x", "must start with a letter or digit"},
      {"name=a/b", "may contain only"},
      {"name=a,size=1G", "unknown key \"size\""},
      {"name=a,qos-group=b", "unknown key \"qos-group\""},
      {"name=a,junk", "not key=value"},
      {"name=a,iops=many", "QoS group key iops:"},
      {"name=a,bandwidth-read=1Q", "QoS group key bandwidth-read:"},
      {"name=a,iops-write-burst=5", "QoS group a: iops-write burst needs"},
      {"name=a,bandwidth=2TiB", "bandwidth"},
  };
  for (const auto& c : cases) {
    auto r = ParseQosGroupSpec(c.spec);
    ASSERT_FALSE(r.ok()) << c.spec;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.mentions), absl::string_view::npos)
        << c.spec << " -> " << r.status().message();
  }
}

TEST(FormatQosSpecTest, RoundTripsThroughTheSpecKeys) {
  EXPECT_EQ(FormatQosSpec({}), "");
  QosLimits l;
  l[QosLimitKind::kIopsTotal] = {5000, 500};
  l[QosLimitKind::kBpsTotal] = {200ull << 20, 0};
  l[QosLimitKind::kBpsWrite] = {100000000, 1000001};  // no whole unit
  EXPECT_EQ(FormatQosSpec(l),
            "iops=5000,iops-burst=500,bandwidth=200MiB,"
            "bandwidth-write=100000000,bandwidth-write-burst=1000001");
  auto g = ParseQosGroupSpec(absl::StrCat("name=g,", FormatQosSpec(l)));
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->limits, l);
}

TEST(ValidateBlockSizesTest, SpecRules) {
  EXPECT_TRUE(ValidateBlockSizes({1, 4096, 32u << 20}).ok());
  EXPECT_TRUE(ValidateBlockSizes({4096, 4096, 4096}).ok());
  EXPECT_FALSE(ValidateBlockSizes({3, 4096, 32u << 20}).ok());  // not pow2
  EXPECT_FALSE(
      ValidateBlockSizes({1u << 17, 1u << 17, 1u << 20}).ok());   // > 64 KiB
  EXPECT_FALSE(ValidateBlockSizes({1, 256, 32u << 20}).ok());     // < 512
  EXPECT_FALSE(ValidateBlockSizes({1024, 512, 32u << 20}).ok());  // < minimum
  EXPECT_FALSE(ValidateBlockSizes({1, 4096, 2048}).ok());  // max < preferred
  EXPECT_FALSE(
      ValidateBlockSizes({1, 4096, (32u << 20) + 4096}).ok());  // > limit
}

TEST(ValidateExportNameTest, Limits) {
  EXPECT_TRUE(ValidateExportName("vm-01.disk_0:a").ok());
  EXPECT_FALSE(ValidateExportName(std::string(129, 'a')).ok());
  EXPECT_TRUE(ValidateExportName(std::string(128, 'a')).ok());
  EXPECT_FALSE(ValidateExportName("-x").ok());
  EXPECT_FALSE(ValidateExportName("a b").ok());
}

TEST(ValidateExportConfigTest, RangesAndStrings) {
  ExportConfig c;
  c.name = "x";
  c.backend = BackendKind::kNull;
  c.size = uint64_t{1} << 63;  // one more than NBD can carry
  EXPECT_EQ(ValidateExportConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c.size = INT64_MAX;
  EXPECT_TRUE(ValidateExportConfig(c).ok());
  c.buffers.pool_idle_release = std::chrono::hours(9000);
  EXPECT_EQ(ValidateExportConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c.buffers.pool_idle_release = std::chrono::hours(8000);
  EXPECT_TRUE(ValidateExportConfig(c).ok());
  c.stall_timeout = std::chrono::hours(25);
  EXPECT_EQ(ValidateExportConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c.stall_timeout.reset();
  c.description = "caf\xc3\xa9";  // UTF-8
  EXPECT_TRUE(ValidateExportConfig(c).ok());
  for (const char* bad : {"\xc3", "\xff", "\xc0\xaf", "\xed\xa0\x80"}) {
    c.description = bad;  // truncated, invalid, overlong, surrogate
    EXPECT_EQ(ValidateExportConfig(c).code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  c.description.clear();
  c.buffers.memory_cap_bytes = UINT64_MAX;
  EXPECT_EQ(ValidateExportConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c.buffers.memory_cap_bytes = 0;
  c.backend = BackendKind::kFile;
  c.path = std::string("/a\0b", 4);
  EXPECT_EQ(ValidateExportConfig(c).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace nbdmgr
