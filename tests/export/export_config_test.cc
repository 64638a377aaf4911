#include "lib/export/export_config.h"

#include <gtest/gtest.h>

#include <span>

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
