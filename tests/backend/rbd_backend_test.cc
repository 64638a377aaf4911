// RbdBackend against a real throwaway Ceph cluster: run through
// tests/interop/with_ceph.py (ctest -R rbd_backend), which starts one and
// sets NBDMGR_CEPH_CONF. Without it every test is skipped.
#include "lib/backend/rbd_backend.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace nbdmgr {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kObject = 4 * kMiB;  // librbd's default object size
constexpr uint32_t kHole = kExtentHole | kExtentZero;

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::vector<uint8_t> Pattern(uint32_t seed, size_t n) {
  std::vector<uint8_t> v(n);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x = x * 1103515245u + 12345u;
    b = static_cast<uint8_t>(x >> 16);
  }
  return v;
}

// The completion of one asynchronous call: records its status and how often
// Complete ran, and wakes Wait().
class TestCompletion final : public IoCompletion {
 public:
  void Complete(absl::Status status) override {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = std::move(status);
    ++calls_;
    cv_.notify_all();
  }
  absl::Status Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, std::chrono::seconds(60),
                      [this] { return calls_ > 0; })) {
      return absl::DeadlineExceededError("no completion within 60 s");
    }
    return status_;
  }
  int calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  absl::Status status_;
  int calls_ = 0;
};

std::vector<Extent> ExtentsOf(RbdBackend& b, uint64_t offset, uint64_t length) {
  std::vector<Extent> out;
  absl::Status st = b.Extents(offset, length, [&](Extent e) {
    out.push_back(e);
    return true;
  });
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

std::string Show(const std::vector<Extent>& ex) {
  std::ostringstream s;
  for (const Extent& e : ex)
    s << "[" << e.length << " flags " << e.flags << "]";
  return s.str();
}

// The cluster's conf and a test client of its own (client.admin, not
// through the backend's connections) for setup and checks; a second user,
// client.other (profile rbd), with a conf of its own naming its keyring; a
// read-only user, client.ro (profile rbd-read-only).
class RbdBackendTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    conf_ = Env("NBDMGR_CEPH_CONF");
    if (conf_.empty()) return;
    ASSERT_EQ(rados_create2(&admin_, "ceph", "client.admin", 0), 0);
    ASSERT_EQ(rados_conf_read_file(admin_, conf_.c_str()), 0);
    rados_conf_set(admin_, "client_mount_timeout", "30");
    ASSERT_EQ(rados_connect(admin_), 0);
    ASSERT_EQ(rados_ioctx_create(admin_, "rbd", &io_), 0);
    other_conf_ = AddUser("other", "profile rbd", "profile rbd");
    ro_conf_ = AddUser("ro", "profile rbd", "profile rbd-read-only");
  }
  static void TearDownTestSuite() {
    if (io_ != nullptr) rados_ioctx_destroy(io_);
    if (admin_ != nullptr) rados_shutdown(admin_);
    io_ = nullptr;
    admin_ = nullptr;
  }

  // Creates client.<name> with those caps, writes its keyring and a conf
  // that names it, and returns the conf's path.
  static std::string AddUser(const std::string& name, const std::string& mon,
                             const std::string& osd) {
    const std::string cmd =
        "{\"prefix\": \"auth get-or-create\", \"entity\": \"client." + name +
        "\", \"caps\": [\"mon\", \"" + mon + "\", \"osd\", \"" + osd + "\"]}";
    const char* cmds[] = {cmd.c_str()};
    char* out = nullptr;
    size_t out_len = 0;
    char* status = nullptr;
    size_t status_len = 0;
    int r = rados_mon_command(admin_, cmds, 1, "", 0, &out, &out_len, &status,
                              &status_len);
    std::string keyring(out == nullptr ? "" : out, out_len);
    rados_buffer_free(out);
    rados_buffer_free(status);
    EXPECT_EQ(r, 0) << cmd;
    const std::string dir = Env("NBDMGR_CEPH_DIR");
    const std::string key_path = dir + "/test-client." + name + ".keyring";
    std::ofstream(key_path) << keyring;
    std::ifstream in(conf_);
    std::stringstream conf;
    conf << in.rdbuf() << "\n[client." << name << "]\n\tkeyring = " << key_path
         << "\n";
    const std::string conf_path = dir + "/test-" + name + ".conf";
    std::ofstream(conf_path) << conf.str();
    return conf_path;
  }

  void SetUp() override {
    if (conf_.empty()) {
      GTEST_SKIP() << "NBDMGR_CEPH_CONF is not set: no Ceph cluster. Run "
                      "through tests/interop/with_ceph.py (ctest -R "
                      "rbd_backend)";
    }
    ASSERT_NE(io_, nullptr);
    image_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
  }

  RbdOptions Options() const {
    RbdOptions o;
    o.pool = "rbd";
    o.image = image_;
    o.ceph_conf = conf_;
    o.ceph_user = Env("NBDMGR_CEPH_USER");
    return o;
  }
  RbdOptions OtherUser() const {
    RbdOptions o = Options();
    o.ceph_conf = other_conf_;
    o.ceph_user = "other";
    return o;
  }

  std::unique_ptr<RbdBackend> OpenOk(const RbdOptions& o) {
    absl::StatusOr<std::unique_ptr<RbdBackend>> b = RbdBackend::Open(o);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? std::move(*b) : nullptr;
  }
  std::unique_ptr<RbdBackend> Create(uint64_t size = 64 * kMiB) {
    RbdOptions o = Options();
    o.create_size = size;
    return OpenOk(o);
  }

  // The image's bytes as the test's own client reads them.
  std::vector<uint8_t> ReadDirect(uint64_t offset, size_t length,
                                  const char* snap = nullptr) {
    std::vector<uint8_t> buf(length);
    rbd_image_t img;
    int r = rbd_open_read_only(io_, image_.c_str(), &img, snap);
    EXPECT_EQ(r, 0);
    if (r != 0) return {};
    EXPECT_EQ(
        rbd_read(img, offset, length, reinterpret_cast<char*>(buf.data())),
        static_cast<ssize_t>(length));
    rbd_close(img);
    return buf;
  }

  static inline std::string conf_, other_conf_, ro_conf_;
  static inline rados_t admin_ = nullptr;
  static inline rados_ioctx_t io_ = nullptr;
  std::string image_;
};

// ---- opening and its errors ------------------------------------------------

TEST_F(RbdBackendTest, CreatesImageWithSize) {
  auto t0 = Clock::now();
  auto b = Create(64 * kMiB);
  ASSERT_NE(b, nullptr);
  std::printf("open with create: %.3f s\n", SecondsSince(t0));
  EXPECT_EQ(b->size(), 64 * kMiB);
  EXPECT_FALSE(b->read_only());
  EXPECT_FALSE(b->fenced());
  EXPECT_EQ(b->lock_owner(), "");
  BackendCaps c = b->caps();
  EXPECT_TRUE(c.async);
  EXPECT_FALSE(c.async_needs_ring);
  EXPECT_TRUE(c.blocking);
  EXPECT_TRUE(c.can_multi_conn && c.can_extents && c.can_trim && c.can_zero);
  EXPECT_FALSE(c.can_fast_zero);
  // librbd's default features, exclusive-lock among them.
  rbd_image_t img;
  ASSERT_EQ(rbd_open_read_only(io_, image_.c_str(), &img, nullptr), 0);
  uint64_t features = 0, size = 0;
  ASSERT_EQ(rbd_get_features(img, &features), 0);
  ASSERT_EQ(rbd_get_size(img, &size), 0);
  rbd_close(img);
  EXPECT_EQ(size, 64 * kMiB);
  EXPECT_NE(features & RBD_FEATURE_EXCLUSIVE_LOCK, 0u);
  EXPECT_NE(features & RBD_FEATURE_OBJECT_MAP, 0u);
  EXPECT_NE(features & RBD_FEATURE_FAST_DIFF, 0u);
  // Closed, the lock is free: it opens again, without a size too.
  b.reset();
  t0 = Clock::now();
  EXPECT_NE(OpenOk(Options()), nullptr);
  std::printf("open existing: %.3f s\n", SecondsSince(t0));
}

TEST_F(RbdBackendTest, CreateSizeOfExistingImageMustMatch) {
  ASSERT_NE(Create(64 * kMiB), nullptr);
  RbdOptions o = Options();
  o.create_size = 32 * kMiB;
  auto b = RbdBackend::Open(o);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("rbd/" + image_));
}

TEST_F(RbdBackendTest, MissingImageIsNotFound) {
  auto b = RbdBackend::Open(Options());
  ASSERT_EQ(b.status().code(), absl::StatusCode::kNotFound) << b.status();
  EXPECT_THAT(b.status().message(), HasSubstr("image rbd/" + image_));
  EXPECT_THAT(b.status().message(), HasSubstr("client.admin"));
  // Read-only: not created even with a size.
  RbdOptions o = Options();
  o.read_only = true;
  o.create_size = 64 * kMiB;
  EXPECT_EQ(RbdBackend::Open(o).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(RbdBackendTest, MissingPoolIsNotFound) {
  RbdOptions o = Options();
  o.pool = "nopool";
  o.create_size = 64 * kMiB;
  auto b = RbdBackend::Open(o);
  ASSERT_EQ(b.status().code(), absl::StatusCode::kNotFound) << b.status();
  EXPECT_THAT(b.status().message(), HasSubstr("pool nopool"));
}

TEST_F(RbdBackendTest, MissingNamespaceIsNotFound) {
  RbdOptions o = Options();
  o.ns = "nons";
  o.create_size = 64 * kMiB;
  auto b = RbdBackend::Open(o);
  ASSERT_EQ(b.status().code(), absl::StatusCode::kNotFound) << b.status();
  EXPECT_THAT(b.status().message(), HasSubstr("nons"));
}

TEST_F(RbdBackendTest, MissingSnapshotIsNotFound) {
  ASSERT_NE(Create(), nullptr);
  RbdOptions o = Options();
  o.snapshot = "nosnap";
  auto b = RbdBackend::Open(o);
  ASSERT_EQ(b.status().code(), absl::StatusCode::kNotFound) << b.status();
  EXPECT_THAT(b.status().message(), HasSubstr("snapshot nosnap"));
}

TEST_F(RbdBackendTest, UnknownUserIsPermissionDenied) {
  RbdOptions o = Options();
  o.ceph_user = "ghost";
  auto t0 = Clock::now();
  auto b = RbdBackend::Open(o);
  ASSERT_EQ(b.status().code(), absl::StatusCode::kPermissionDenied)
      << b.status();
  EXPECT_THAT(b.status().message(), HasSubstr("client.ghost"));
  EXPECT_LT(SecondsSince(t0), 5);
  std::printf("unknown user: %s (%.3f s)\n", b.status().ToString().c_str(),
              SecondsSince(t0));
}

TEST_F(RbdBackendTest, ReadOnlyCapsOpenOnlyReadOnly) {
  ASSERT_NE(Create(), nullptr);
  RbdOptions o = Options();
  o.ceph_conf = ro_conf_;
  o.ceph_user = "client.ro";  // the "client." prefix is accepted
  auto b = RbdBackend::Open(o);
  ASSERT_EQ(b.status().code(), absl::StatusCode::kPermissionDenied)
      << b.status();
  EXPECT_THAT(b.status().message(), HasSubstr("client.ro"));
  std::printf("read-only caps, writable open: %s\n",
              b.status().ToString().c_str());
  o.read_only = true;
  EXPECT_NE(OpenOk(o), nullptr);
}

TEST_F(RbdBackendTest, MissingConfIsNotFound) {
  RbdOptions o = Options();
  o.ceph_conf = "/nonexistent/ceph.conf";
  auto b = RbdBackend::Open(o);
  ASSERT_EQ(b.status().code(), absl::StatusCode::kNotFound) << b.status();
  EXPECT_THAT(b.status().message(), HasSubstr("/nonexistent/ceph.conf"));
}

TEST_F(RbdBackendTest, UnreachableMonitorIsUnavailable) {
  // Nothing listens on port 1; the conf's own timeout overrides the 15 s.
  const std::string path = Env("NBDMGR_CEPH_DIR") + "/test-unreachable.conf";
  std::ofstream(path) << "[global]\n\tmon host = 127.0.0.1:1\n"
                      << "\tclient mount timeout = 2\n"
                      << "\tkeyring = " << Env("NBDMGR_CEPH_KEYRING") << "\n";
  RbdOptions o = Options();
  o.ceph_conf = path;
  auto t0 = Clock::now();
  auto b = RbdBackend::Open(o);
  const double took = SecondsSince(t0);
  ASSERT_EQ(b.status().code(), absl::StatusCode::kUnavailable) << b.status();
  EXPECT_THAT(b.status().message(), HasSubstr(path));
  EXPECT_THAT(b.status().message(), HasSubstr("client.admin"));
  EXPECT_LT(took, 10);
  std::printf("unreachable monitor: %s (%.2f s)\n",
              b.status().ToString().c_str(), took);
}

TEST_F(RbdBackendTest, EmptyPoolOrImageIsInvalidArgument) {
  RbdOptions o = Options();
  o.image = "";
  EXPECT_EQ(RbdBackend::Open(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = Options();
  o.pool = "";
  EXPECT_EQ(RbdBackend::Open(o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- the data path
// -----------------------------------------------------------

TEST_F(RbdBackendTest, AsyncRoundTripManyInFlight) {
  auto b = Create(64 * kMiB);
  ASSERT_NE(b, nullptr);
  struct Io {
    uint64_t offset;
    std::vector<uint8_t> data;
    TestCompletion done;
  };
  std::vector<std::unique_ptr<Io>> ios;
  auto add = [&](uint64_t offset, std::vector<uint8_t> data) {
    ios.push_back(std::make_unique<Io>());
    ios.back()->offset = offset;
    ios.back()->data = std::move(data);
  };
  for (uint32_t i = 0; i < 64; ++i) {  // 64 x 4 KiB, scattered
    add(i * 64 * 1024 + 512 * (i % 7), Pattern(i, 4096));
  }
  for (uint32_t i = 0; i < 8; ++i) {  // 8 x 1 MiB from 8 MiB up
    add(8 * kMiB + i * kMiB, Pattern(100 + i, kMiB));
  }
  auto t0 = Clock::now();
  for (auto& io : ios) {
    b->WriteAsync(io->offset, io->data, false, nullptr, io->done);
  }
  for (auto& io : ios) ASSERT_TRUE(io->done.Wait().ok()) << io->offset;
  const double wrote = SecondsSince(t0);

  std::vector<std::vector<uint8_t>> back(ios.size());
  std::vector<std::unique_ptr<TestCompletion>> reads;
  t0 = Clock::now();
  for (size_t i = 0; i < ios.size(); ++i) {
    back[i].assign(ios[i]->data.size(), 0xee);
    reads.push_back(std::make_unique<TestCompletion>());
    b->ReadAsync(ios[i]->offset, back[i], nullptr, *reads.back());
  }
  for (size_t i = 0; i < ios.size(); ++i) {
    ASSERT_TRUE(reads[i]->Wait().ok());
    EXPECT_EQ(reads[i]->calls(), 1);
    EXPECT_EQ(ios[i]->done.calls(), 1);
    EXPECT_TRUE(back[i] == ios[i]->data) << "at " << ios[i]->offset;
  }
  std::printf("72 writes (8.25 MiB) in flight: %.3f s, reads: %.3f s\n", wrote,
              SecondsSince(t0));
  // Never written: zeroes.
  std::vector<uint8_t> hole(kMiB, 0xee);
  TestCompletion done;
  b->ReadAsync(32 * kMiB, hole, nullptr, done);
  ASSERT_TRUE(done.Wait().ok());
  EXPECT_EQ(hole, std::vector<uint8_t>(kMiB, 0));
  // Unaligned, across an object boundary.
  std::vector<uint8_t> odd = Pattern(7, 3 * 4096 + 17);
  ASSERT_TRUE(b->Write(kObject - 5000, odd, false).ok());
  std::vector<uint8_t> odd_back(odd.size());
  ASSERT_TRUE(b->Read(kObject - 5000, odd_back).ok());
  EXPECT_EQ(odd_back, odd);
}

TEST_F(RbdBackendTest, SyncReadWriteFlush) {
  auto b = Create();
  ASSERT_NE(b, nullptr);
  std::vector<uint8_t> data = Pattern(1, 10000);
  ASSERT_TRUE(b->Write(777, data, false).ok());
  ASSERT_TRUE(b->Flush().ok());
  std::vector<uint8_t> back(data.size());
  ASSERT_TRUE(b->Read(777, back).ok());
  EXPECT_EQ(back, data);
  // The last bytes of the image.
  std::vector<uint8_t> tail = Pattern(2, 4096);
  ASSERT_TRUE(b->Write(b->size() - 4096, tail, true).ok());
  ASSERT_TRUE(
      b->Read(b->size() - 4096, back = std::vector<uint8_t>(4096)).ok());
  EXPECT_EQ(back, tail);
}

TEST_F(RbdBackendTest, FuaWriteIsDurableForAnotherClient) {
  auto b = Create();
  ASSERT_NE(b, nullptr);
  std::vector<uint8_t> data = Pattern(3, 64 * 1024);
  TestCompletion done;
  b->WriteAsync(3 * kMiB, data, /*fua=*/true, nullptr, done);
  ASSERT_TRUE(done.Wait().ok());
  EXPECT_EQ(done.calls(), 1);
  EXPECT_EQ(ReadDirect(3 * kMiB, data.size()), data);
}

TEST_F(RbdBackendTest, FlushAsyncCoversEarlierWrites) {
  auto b = Create();
  ASSERT_NE(b, nullptr);
  std::vector<std::vector<uint8_t>> data;
  std::vector<std::unique_ptr<TestCompletion>> writes;
  for (uint32_t i = 0; i < 16; ++i) {
    data.push_back(Pattern(200 + i, 64 * 1024));
    writes.push_back(std::make_unique<TestCompletion>());
    b->WriteAsync(i * 256 * 1024, data.back(), false, nullptr, *writes.back());
  }
  for (auto& w : writes) ASSERT_TRUE(w->Wait().ok());
  TestCompletion flushed;
  b->FlushAsync(nullptr, flushed);
  ASSERT_TRUE(flushed.Wait().ok());
  for (uint32_t i = 0; i < 16; ++i) {
    EXPECT_EQ(ReadDirect(i * 256 * 1024, 64 * 1024), data[i]) << i;
  }
}

TEST_F(RbdBackendTest, TrimReadsZeroes) {
  auto b = Create();
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(b->Write(0, std::vector<uint8_t>(8 * kMiB, 0xab), false).ok());
  // A small unaligned trim (rbd_discard would skip it: below its 64 KiB
  // granularity) and a whole object.
  ASSERT_TRUE(b->Trim(4096 + 512, 4096, false).ok());
  ASSERT_TRUE(b->Trim(kObject, kObject, /*fua=*/true).ok());
  std::vector<uint8_t> back(8 * kMiB);
  ASSERT_TRUE(b->Read(0, back).ok());
  for (size_t i = 0; i < back.size(); ++i) {
    const bool trimmed =
        (i >= 4096 + 512 && i < 2 * 4096 + 512) || i >= kObject;
    ASSERT_EQ(back[i], trimmed ? 0 : 0xab) << "at " << i;
  }
  std::vector<Extent> ex = ExtentsOf(*b, 0, 8 * kMiB);
  ASSERT_EQ(ex.size(), 2u) << Show(ex);
  EXPECT_EQ(ex[0].length, kObject);
  EXPECT_EQ(ex[0].flags, 0u);
  EXPECT_EQ(ex[1].length, kObject);
  EXPECT_EQ(ex[1].flags, kHole);
}

TEST_F(RbdBackendTest, ZeroThenExtents) {
  auto b = Create(16 * kMiB);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(b->Write(0, std::vector<uint8_t>(12 * kMiB, 0x5a), false).ok());
  // Object 1 zeroed, holes allowed: removed.
  ASSERT_TRUE(b->Zero(kObject, kObject, {}).ok());
  // Object 2 zeroed with NO_HOLE: zeroes written, still allocated.
  ZeroOptions no_hole;
  no_hole.may_trim = false;
  no_hole.fua = true;
  ASSERT_TRUE(b->Zero(2 * kObject, kObject, no_hole).ok());
  // Part of object 0.
  ASSERT_TRUE(b->Zero(1000, 3000, {}).ok());
  std::vector<uint8_t> back(12 * kMiB);
  ASSERT_TRUE(b->Read(0, back).ok());
  for (size_t i = 0; i < back.size(); ++i) {
    const bool zeroed = (i >= 1000 && i < 4000) || i >= kObject;
    ASSERT_EQ(back[i], zeroed ? 0 : 0x5a) << "at " << i;
  }
  std::vector<Extent> ex = ExtentsOf(*b, 0, 16 * kMiB);
  std::printf("extents after zeroing: %s\n", Show(ex).c_str());
  ASSERT_EQ(ex.size(), 4u) << Show(ex);
  EXPECT_EQ(ex[0].length, kObject);
  EXPECT_EQ(ex[0].flags, 0u);
  EXPECT_EQ(ex[1].length, kObject);
  EXPECT_EQ(ex[1].flags, kHole);
  EXPECT_EQ(ex[2].length, kObject);  // NO_HOLE: allocated
  EXPECT_EQ(ex[2].flags, 0u);
  EXPECT_EQ(ex[3].length, kObject);  // never written
  EXPECT_EQ(ex[3].flags, kHole);

  ZeroOptions fast;
  fast.fast = true;
  EXPECT_EQ(b->Zero(0, 4096, fast).code(), absl::StatusCode::kUnimplemented);
}

TEST_F(RbdBackendTest, ExtentsOfFreshImageIsOneHole) {
  auto b = Create(64 * kMiB);
  ASSERT_NE(b, nullptr);
  std::vector<Extent> ex = ExtentsOf(*b, 0, 64 * kMiB);
  ASSERT_EQ(ex.size(), 1u) << Show(ex);
  EXPECT_EQ(ex[0].length, 64 * kMiB);
  EXPECT_EQ(ex[0].flags, kHole);
}

TEST_F(RbdBackendTest, ExtentsOfASubrangeAndEarlyStop) {
  auto b = Create(64 * kMiB);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(b->Write(20 * kMiB, std::vector<uint8_t>(4096, 1), false).ok());
  ASSERT_TRUE(b->Write(40 * kMiB, std::vector<uint8_t>(4096, 1), false).ok());
  // From inside a hole to inside the data: clipped to the range.
  std::vector<Extent> ex = ExtentsOf(*b, 10 * kMiB, 10 * kMiB + 1000);
  ASSERT_EQ(ex.size(), 2u) << Show(ex);
  EXPECT_EQ(ex[0].length, 10 * kMiB);
  EXPECT_EQ(ex[0].flags, kHole);
  EXPECT_EQ(ex[1].length, 1000u);
  EXPECT_EQ(ex[1].flags, 0u);
  // Stops when told to.
  int calls = 0;
  ASSERT_TRUE(b->Extents(0, 64 * kMiB, [&](Extent) {
                 ++calls;
                 return false;
               }).ok());
  EXPECT_EQ(calls, 1);
  // Every byte covered, in order.
  ex = ExtentsOf(*b, 0, 64 * kMiB);
  uint64_t total = 0;
  for (const Extent& e : ex) total += e.length;
  EXPECT_EQ(total, 64 * kMiB) << Show(ex);
  ASSERT_GE(ex.size(), 5u) << Show(ex);
  EXPECT_EQ(ex[0].flags, kHole);
  EXPECT_EQ(ex[0].length, 20 * kMiB);
  EXPECT_EQ(ex[1].flags, 0u);
}

// Block status is asked of the cluster 256 MiB at a time; what a client
// sees is the same: runs merged across windows, every byte covered.
TEST_F(RbdBackendTest, ExtentsAcrossDiffWindows) {
  constexpr uint64_t kSize = 1024 * kMiB;  // thin: costs nothing
  auto b = Create(kSize);
  ASSERT_NE(b, nullptr);
  // Data straddling the first window's end, and a run of holes spanning
  // two whole windows. (Object-aligned: librbd reports an object's data
  // from the object's start.)
  ASSERT_TRUE(
      b->Write(252 * kMiB, std::vector<uint8_t>(8 * kMiB, 7), false).ok());
  ASSERT_TRUE(b->Write(900 * kMiB, std::vector<uint8_t>(4096, 7), false).ok());
  std::vector<Extent> ex = ExtentsOf(*b, 0, kSize);
  ASSERT_EQ(ex.size(), 5u) << Show(ex);
  EXPECT_EQ(ex[0].flags, kHole);
  EXPECT_EQ(ex[0].length, 252 * kMiB);
  EXPECT_EQ(ex[1].flags, 0u);
  EXPECT_EQ(ex[1].length, 8 * kMiB);
  EXPECT_EQ(ex[2].flags, kHole);
  EXPECT_EQ(ex[2].length, 640 * kMiB);
  EXPECT_EQ(ex[3].flags, 0u);
  EXPECT_EQ(ex[3].length, 4096u);
  EXPECT_EQ(ex[4].flags, kHole);
  EXPECT_EQ(ex[4].length, kSize - 900 * kMiB - 4096);
}

TEST_F(RbdBackendTest, SnapshotIsReadOnly) {
  std::vector<uint8_t> before = Pattern(10, 8192), after = Pattern(11, 8192);
  {
    auto b = Create();
    ASSERT_NE(b, nullptr);
    ASSERT_TRUE(b->Write(0, before, true).ok());
  }
  rbd_image_t img;
  ASSERT_EQ(rbd_open(io_, image_.c_str(), &img, nullptr), 0);
  ASSERT_EQ(rbd_snap_create(img, "s1"), 0);
  rbd_close(img);
  auto head = OpenOk(Options());
  ASSERT_NE(head, nullptr);
  ASSERT_TRUE(head->Write(0, after, true).ok());

  RbdOptions o = Options();
  o.snapshot = "s1";  // not asked read-only: a snapshot is anyway
  auto snap = OpenOk(o);
  ASSERT_NE(snap, nullptr);
  EXPECT_TRUE(snap->read_only());
  std::vector<uint8_t> back(8192);
  ASSERT_TRUE(snap->Read(0, back).ok());
  EXPECT_EQ(back, before);
  TestCompletion done;
  snap->WriteAsync(0, after, false, nullptr, done);
  EXPECT_EQ(done.Wait().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(snap->Write(0, after, true).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(snap->Trim(0, 4096, false).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(snap->Zero(0, 4096, {}).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(snap->Flush().ok());  // nothing to flush
  EXPECT_FALSE(snap->fenced());
  EXPECT_EQ(ReadDirect(0, 8192, "s1"), before);
  EXPECT_EQ(ReadDirect(0, 8192), after);
  // Its block status is the snapshot's.
  std::vector<Extent> ex = ExtentsOf(*snap, 0, snap->size());
  ASSERT_FALSE(ex.empty());
  EXPECT_EQ(ex[0].flags, 0u);
}

// ---- locking, sharing and fencing ------------------------------------------

TEST_F(RbdBackendTest, ReadOnlyExportTakesNoLock) {
  auto writer = Create();
  ASSERT_NE(writer, nullptr);
  std::vector<uint8_t> data = Pattern(20, 4096);
  ASSERT_TRUE(writer->Write(0, data, true).ok());
  RbdOptions o = Options();
  o.read_only = true;
  auto reader = OpenOk(o);
  ASSERT_NE(reader, nullptr);
  auto reader2 = OpenOk(o);  // as many as wanted
  ASSERT_NE(reader2, nullptr);
  std::vector<uint8_t> back(4096);
  ASSERT_TRUE(reader->Read(0, back).ok());
  EXPECT_EQ(back, data);
  // The readers see the writer as the holder; the writer holds it.
  EXPECT_EQ(writer->lock_owner(), "");
  EXPECT_EQ(reader->lock_owner(), writer->client_address());
  // The writer keeps writing.
  ASSERT_TRUE(writer->Write(4096, data, true).ok());
  EXPECT_FALSE(writer->fenced());
}

TEST_F(RbdBackendTest, SameConfAndUserShareOneConnection) {
  ASSERT_NE(Create(), nullptr);
  RbdOptions o = Options();
  o.read_only = true;
  auto a = OpenOk(o);
  auto b = OpenOk(o);
  auto c = OpenOk(OtherUser());
  ASSERT_TRUE(a && b && c);
  EXPECT_FALSE(a->client_address().empty());
  EXPECT_EQ(a->client_address(), b->client_address());
  EXPECT_NE(a->client_address(), c->client_address());
  // The last export of a connection shuts it down; the next one connects.
  const std::string old = a->client_address();
  a.reset();
  b.reset();
  auto d = OpenOk(o);
  ASSERT_NE(d, nullptr);
  EXPECT_NE(d->client_address(), old);
}

TEST_F(RbdBackendTest, SecondWriterIsRefusedNamingTheHolder) {
  auto a = Create();
  ASSERT_NE(a, nullptr);
  // Another client (another host, as far as Ceph can tell).
  auto t0 = Clock::now();
  auto b = RbdBackend::Open(OtherUser());
  ASSERT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition)
      << b.status();
  EXPECT_THAT(b.status().message(), HasSubstr(a->client_address()));
  EXPECT_THAT(b.status().message(), HasSubstr("rbd/" + image_));
  std::printf("second writer refused in %.3f s: %s\n", SecondsSince(t0),
              b.status().ToString().c_str());
  // Another export of this process (the same client): refused, and a take
  // over would fence this very client, so it is refused too.
  auto same = RbdBackend::Open(Options());
  EXPECT_EQ(same.status().code(), absl::StatusCode::kFailedPrecondition)
      << same.status();
  RbdOptions take = Options();
  take.take_over = true;
  same = RbdBackend::Open(take);
  EXPECT_EQ(same.status().code(), absl::StatusCode::kFailedPrecondition)
      << same.status();
  EXPECT_THAT(same.status().message(), HasSubstr("this process"));
  // The holder is untouched.
  EXPECT_FALSE(a->fenced());
  ASSERT_TRUE(a->Write(0, Pattern(1, 4096), true).ok());
  EXPECT_EQ(a->lock_owner(), "");
}

TEST_F(RbdBackendTest, TakeOverFencesTheOldHolder) {
  auto a = Create();
  ASSERT_NE(a, nullptr);
  const std::string a_addr = a->client_address();
  std::vector<uint8_t> x = Pattern(30, 4096), y = Pattern(31, 4096),
                       z = Pattern(32, 4096);
  ASSERT_TRUE(a->Write(0, x, true).ok());

  RbdOptions o = OtherUser();
  o.take_over = true;
  auto t0 = Clock::now();
  auto b = OpenOk(o);
  ASSERT_NE(b, nullptr);
  std::printf("take over: %.3f s\n", SecondsSince(t0));
  EXPECT_EQ(b->lock_owner(), "");
  ASSERT_TRUE(b->Write(0, y, true).ok());

  // A finds out at its next write, or at the latest at the flush after it:
  // librbd's cache (writearound, once a flush was seen) may acknowledge a
  // plain write before the OSD refuses it. It never lands.
  TestCompletion done;
  a->WriteAsync(0, z, false, nullptr, done);
  absl::Status st = done.Wait();
  EXPECT_TRUE(st.ok() || st.code() == absl::StatusCode::kUnavailable) << st;
  std::printf("plain write after the take over: %s\n", st.ToString().c_str());
  TestCompletion flushed_once;
  a->FlushAsync(nullptr, flushed_once);
  st = flushed_once.Wait();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_THAT(st.message(), HasSubstr("blocklisted"));
  EXPECT_TRUE(a->fenced());
  std::printf("then flush: %s\n", st.ToString().c_str());
  // From then on nothing reaches librbd: everything fails at once.
  t0 = Clock::now();
  EXPECT_EQ(a->Write(0, z, true).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(a->Trim(0, 4096, false).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(a->Zero(0, 4096, {}).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(a->Flush().code(), absl::StatusCode::kUnavailable);
  TestCompletion flushed;
  a->FlushAsync(nullptr, flushed);
  EXPECT_EQ(flushed.Wait().code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(SecondsSince(t0), 0.5);

  // The image holds what the new holder wrote.
  std::vector<uint8_t> back(4096);
  ASSERT_TRUE(b->Read(0, back).ok());
  EXPECT_EQ(back, y);
  EXPECT_EQ(ReadDirect(0, 4096), y);

  // A new export as A's user does not get A's fenced client.
  RbdOptions ro = Options();
  ro.read_only = true;
  auto c = OpenOk(ro);
  ASSERT_NE(c, nullptr);
  EXPECT_NE(c->client_address(), a_addr);
  EXPECT_EQ(c->lock_owner(), b->client_address());
  ASSERT_TRUE(c->Read(0, back).ok());
  EXPECT_EQ(back, y);

  // Closing the fenced backend does not hang.
  t0 = Clock::now();
  a.reset();
  EXPECT_LT(SecondsSince(t0), 5);
  std::printf("close of fenced backend: %.3f s\n", SecondsSince(t0));
  EXPECT_EQ(ReadDirect(0, 4096), y);
  ASSERT_TRUE(b->Write(4096, y, true).ok());
}

// Ceph blocklists clients, not images: taking one image over fences every
// export that shares the old holder's client.
TEST_F(RbdBackendTest, TakeOverFencesEveryExportOfTheClient) {
  auto a = Create();
  ASSERT_NE(a, nullptr);
  RbdOptions o2 = Options();
  o2.image = image_ + "-2";
  o2.create_size = 64 * kMiB;
  auto a2 = OpenOk(o2);
  ASSERT_NE(a2, nullptr);
  ASSERT_EQ(a->client_address(), a2->client_address());
  ASSERT_TRUE(a2->Write(0, Pattern(70, 4096), true).ok());

  RbdOptions o = OtherUser();
  o.take_over = true;
  auto b = OpenOk(o);  // takes over image 1 only
  ASSERT_NE(b, nullptr);
  TestCompletion done;
  a2->WriteAsync(0, Pattern(71, 4096), /*fua=*/true, nullptr, done);
  absl::Status st = done.Wait();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_TRUE(a2->fenced());
  EXPECT_TRUE(a->fenced());  // same client: known fenced without a call
  std::vector<uint8_t> back(4096);
  EXPECT_EQ(a2->Read(0, back).code(), absl::StatusCode::kUnavailable);
  // Image 2 reopens on a new client, without take_over: its lock is still
  // recorded for the blocklisted client, which has no watch any more, so
  // librbd breaks it.
  a2.reset();
  o2.create_size.reset();
  auto again = OpenOk(o2);
  ASSERT_NE(again, nullptr);
  EXPECT_NE(again->client_address(), a->client_address());
  ASSERT_TRUE(again->Read(0, back).ok());
  EXPECT_EQ(back, Pattern(70, 4096));
}

TEST_F(RbdBackendTest, FuaWriteOfAFencedHolderFails) {
  auto a = Create();
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(a->Write(0, Pattern(60, 4096), true).ok());  // cache on
  RbdOptions o = OtherUser();
  o.take_over = true;
  auto b = OpenOk(o);
  ASSERT_NE(b, nullptr);
  std::vector<uint8_t> y = Pattern(61, 4096);
  ASSERT_TRUE(b->Write(0, y, true).ok());
  TestCompletion done;
  a->WriteAsync(0, Pattern(62, 4096), /*fua=*/true, nullptr, done);
  absl::Status st = done.Wait();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_TRUE(a->fenced());
  EXPECT_EQ(ReadDirect(0, 4096), y);
}

TEST_F(RbdBackendTest, ConcurrentOpensShareOneConnection) {
  ASSERT_NE(Create(), nullptr);
  RbdOptions o = OtherUser();
  o.read_only = true;
  std::vector<absl::StatusOr<std::unique_ptr<RbdBackend>>> opened(4);
  std::vector<std::thread> threads;
  for (auto& slot : opened) {
    threads.emplace_back([&o, &slot] { slot = RbdBackend::Open(o); });
  }
  for (auto& t : threads) t.join();
  for (auto& b : opened) ASSERT_TRUE(b.ok()) << b.status();
  for (auto& b : opened) {
    EXPECT_EQ((*b)->client_address(), (*opened[0])->client_address());
  }
}

// A holder that died (SIGKILL, another host lost): taking over is
// immediate, and the dead client is blocklisted should it come back.
TEST_F(RbdBackendTest, TakeOverFromADeadHolder) {
  ASSERT_NE(Create(), nullptr);  // created, then closed
  const std::string script =
      "import rados, rbd, sys, time\n"
      "r = rados.Rados(rados_id='admin', conffile=sys.argv[1])\n"
      "r.connect(timeout=30)\n"
      "img = rbd.Image(r.open_ioctx('rbd'), sys.argv[2])\n"
      "img.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)\n"
      "img.write(b'\\x77' * 4096, 0)\n"
      "img.flush()\n"
      "print(r.get_addrs(), flush=True)\n"
      "time.sleep(600)\n";
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  const char* argv[] = {"/usr/bin/python3", "-c",           script.c_str(),
                        conf_.c_str(),      image_.c_str(), nullptr};
  pid_t pid;
  ASSERT_EQ(posix_spawn(&pid, argv[0], &actions, nullptr,
                        const_cast<char* const*>(argv), environ),
            0);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out[1]);
  std::string holder;
  char c;
  while (::read(out[0], &c, 1) == 1 && c != '\n') holder += c;
  ::close(out[0]);
  ::kill(pid, SIGKILL);
  ASSERT_EQ(::waitpid(pid, nullptr, 0), pid);
  ASSERT_FALSE(holder.empty()) << "the holder did not start";

  RbdOptions o = OtherUser();
  o.read_only = true;
  auto reader = OpenOk(o);
  ASSERT_NE(reader, nullptr);
  EXPECT_EQ(reader->lock_owner(), holder);  // dead, but still the holder

  // Without take_over: refused at once (its watch lives on for ~30 s; then
  // a plain open would break the stale lock itself).
  o.read_only = false;
  auto t0 = Clock::now();
  auto refused = RbdBackend::Open(o);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition)
      << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr(holder));
  EXPECT_LT(SecondsSince(t0), 5);

  o.take_over = true;
  t0 = Clock::now();
  auto b = OpenOk(o);
  ASSERT_NE(b, nullptr);
  const double took = SecondsSince(t0);
  std::printf("take over from a dead holder: %.3f s\n", took);
  EXPECT_LT(took, 5);
  EXPECT_EQ(b->lock_owner(), "");
  EXPECT_EQ(reader->lock_owner(), b->client_address());
  std::vector<uint8_t> back(4096);
  ASSERT_TRUE(b->Read(0, back).ok());
  EXPECT_EQ(back, std::vector<uint8_t>(4096, 0x77));
  ASSERT_TRUE(b->Write(0, Pattern(50, 4096), true).ok());

  // The dead client is on the blocklist.
  const char* cmds[] = {"{\"prefix\": \"osd blocklist ls\"}"};
  char* outbuf = nullptr;
  size_t outlen = 0;
  char* status = nullptr;
  size_t statuslen = 0;
  ASSERT_EQ(rados_mon_command(admin_, cmds, 1, "", 0, &outbuf, &outlen, &status,
                              &statuslen),
            0);
  std::string listing(outbuf == nullptr ? "" : outbuf, outlen);
  listing += std::string(status == nullptr ? "" : status, statuslen);
  rados_buffer_free(outbuf);
  rados_buffer_free(status);
  EXPECT_THAT(listing, HasSubstr(holder));
}

}  // namespace
}  // namespace nbdmgr
