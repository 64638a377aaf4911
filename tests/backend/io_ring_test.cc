#include "lib/backend/io_ring.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <filesystem>
#include <memory>
#include <optional>
#include <vector>

#include "lib/backend/file_backend.h"
#include "lib/backend/memory_backend.h"
#include "lib/backend/overlay_backend.h"

namespace nbdmgr {
namespace {

namespace asio = boost::asio;

// Records the one completion of an asynchronous backend call.
class Done final : public IoCompletion {
 public:
  void Complete(absl::Status st) override {
    EXPECT_FALSE(status.has_value()) << "completed twice";
    status = std::move(st);
  }
  std::optional<absl::Status> status;
};

class IoRingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!IoRing::Supported()) GTEST_SKIP() << "no io_uring here";
    char tmpl[] = "/tmp/nbdmgr-ring-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    auto r = IoRing::Create(ctx_, 8);  // small: the queue fills up
    ASSERT_TRUE(r.ok()) << r.status();
    ring_ = *r;
  }
  void TearDown() override {
    ring_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<FileBackend> Open(uint64_t size, FileIo io) {
    FileBackendOptions o;
    o.path = dir_ + "/disk.img";
    o.size = size;
    o.io = io;
    auto b = FileBackend::Open(o);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? std::move(*b) : nullptr;
  }
  // Runs the io_context until every call in `calls` completed.
  void RunUntilDone(const std::vector<std::unique_ptr<Done>>& calls) {
    for (int i = 0; i < 10000; ++i) {
      bool all = true;
      for (const auto& c : calls) all = all && c->status.has_value();
      if (all) return;
      ctx_.restart();
      ctx_.run_one_for(std::chrono::milliseconds(10));
    }
    FAIL() << "calls did not complete";
  }

  asio::io_context ctx_{1};
  std::shared_ptr<IoRing> ring_;
  std::string dir_;
};

TEST_F(IoRingTest, AutoPicksIoUringAndThreadsCanBeForced) {
  EXPECT_EQ(Open(1 << 20, FileIo::kAuto)->io(), FileIo::kIoUring);
  EXPECT_TRUE(Open(1 << 20, FileIo::kAuto)->caps().async);
  auto t = Open(1 << 20, FileIo::kThreads);
  EXPECT_EQ(t->io(), FileIo::kThreads);
  EXPECT_FALSE(t->caps().async);
  EXPECT_TRUE(t->caps().blocking);
}

TEST_F(IoRingTest, ParseFileIo) {
  EXPECT_EQ(*ParseFileIo("io_uring"), FileIo::kIoUring);
  EXPECT_EQ(*ParseFileIo("threads"), FileIo::kThreads);
  EXPECT_EQ(*ParseFileIo("auto"), FileIo::kAuto);
  auto bad = ParseFileIo("uring");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("io_uring"), std::string::npos);
}

// More writes at once than the ring has slots, FUA among them, then reads
// of every one: the bytes round-trip and land in the file.
TEST_F(IoRingTest, ManyWritesAndReadsRoundTrip) {
  auto b = Open(4 << 20, FileIo::kIoUring);
  constexpr int kCalls = 40;
  std::vector<std::vector<uint8_t>> data(kCalls);
  std::vector<std::unique_ptr<Done>> writes;
  for (int i = 0; i < kCalls; ++i) {
    data[i].assign(8192 + i, static_cast<uint8_t>(i * 7 + 1));
    writes.push_back(std::make_unique<Done>());
    b->WriteAsync(uint64_t(i) * 65536 + 3, data[i], /*fua=*/i % 3 == 0,
                  ring_.get(), *writes.back());
  }
  RunUntilDone(writes);
  for (const auto& w : writes) EXPECT_TRUE(w->status->ok()) << *w->status;
  std::vector<std::unique_ptr<Done>> flush;
  flush.push_back(std::make_unique<Done>());
  b->FlushAsync(ring_.get(), *flush.back());
  RunUntilDone(flush);
  EXPECT_TRUE(flush[0]->status->ok());

  std::vector<std::vector<uint8_t>> back(kCalls);
  std::vector<std::unique_ptr<Done>> reads;
  for (int i = 0; i < kCalls; ++i) {
    back[i].assign(data[i].size(), 0xEE);
    reads.push_back(std::make_unique<Done>());
    b->ReadAsync(uint64_t(i) * 65536 + 3, back[i], ring_.get(), *reads.back());
  }
  RunUntilDone(reads);
  for (int i = 0; i < kCalls; ++i) {
    EXPECT_TRUE(reads[i]->status->ok());
    EXPECT_EQ(back[i], data[i]) << "call " << i;
    std::vector<uint8_t> sync(data[i].size());
    ASSERT_TRUE(b->Read(uint64_t(i) * 65536 + 3, sync).ok());
    EXPECT_EQ(sync, data[i]);
  }
  EXPECT_EQ(ring_->in_flight(), 0u);
  EXPECT_EQ(ring_->registered_files(), 1u);
}

// A file that shrank under the export reads as zeroes past its end, as
// the synchronous path does.
TEST_F(IoRingTest, ReadPastAShrunkFileIsZeroes) {
  auto b = Open(1 << 20, FileIo::kIoUring);
  std::vector<uint8_t> ones(8192, 1);
  ASSERT_TRUE(b->Write(0, ones, false).ok());
  ASSERT_EQ(::truncate((dir_ + "/disk.img").c_str(), 4096), 0);
  std::vector<uint8_t> back(8192, 0xEE);
  std::vector<std::unique_ptr<Done>> r;
  r.push_back(std::make_unique<Done>());
  b->ReadAsync(0, back, ring_.get(), *r[0]);
  RunUntilDone(r);
  ASSERT_TRUE(r[0]->status->ok());
  EXPECT_EQ(back[4095], 1);
  EXPECT_EQ(back[4096], 0);
  EXPECT_EQ(back[8191], 0);
}

// Errors come back as statuses naming the file: a write to a file opened
// read-only fails with EBADF, through the ring.
TEST_F(IoRingTest, ErrorsAreStatuses) {
  Open(1 << 20, FileIo::kIoUring);  // creates it
  FileBackendOptions o;
  o.path = dir_ + "/disk.img";
  o.read_only = true;
  o.io = FileIo::kIoUring;
  auto ro = FileBackend::Open(o);
  ASSERT_TRUE(ro.ok());
  std::vector<uint8_t> data(4096, 9);
  std::vector<std::unique_ptr<Done>> w;
  w.push_back(std::make_unique<Done>());
  (*ro)->WriteAsync(0, data, false, ring_.get(), *w[0]);
  RunUntilDone(w);
  ASSERT_FALSE(w[0]->status->ok());
  EXPECT_NE(w[0]->status->message().find("disk.img"), std::string::npos)
      << *w[0]->status;
}

// A closed file's registration is dropped from the ring, so the kernel
// does not keep it open.
TEST_F(IoRingTest, ClosedFileIsForgotten) {
  auto b = Open(1 << 20, FileIo::kIoUring);
  std::vector<uint8_t> buf(4096);
  std::vector<std::unique_ptr<Done>> r;
  r.push_back(std::make_unique<Done>());
  b->ReadAsync(0, buf, ring_.get(), *r[0]);
  RunUntilDone(r);
  EXPECT_EQ(ring_->registered_files(), 1u);
  b.reset();
  for (int i = 0; i < 100 && ring_->registered_files() > 0; ++i) {
    ctx_.restart();
    ctx_.run_one_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(ring_->registered_files(), 0u);
}

// Destroying a ring with operations in flight completes them first.
TEST_F(IoRingTest, DestroyWaitsForInFlight) {
  auto b = Open(1 << 20, FileIo::kIoUring);
  std::vector<uint8_t> buf(65536);
  Done d;
  b->ReadAsync(0, buf, ring_.get(), d);
  EXPECT_EQ(ring_->in_flight(), 1u);
  ring_.reset();
  ASSERT_TRUE(d.status.has_value());
  EXPECT_TRUE(d.status->ok());
}

// An overlay reads without a thread hop: its own clusters through the
// ring, the base (a file base through its ring too, a memory base inline),
// zero runs at once; a read across all three completes once, with every
// byte right.
TEST_F(IoRingTest, OverlayReadsAsynchronouslyAcrossRuns) {
  constexpr uint64_t kSize = 4 << 20;
  std::shared_ptr<Backend> bases[2] = {
      std::shared_ptr<Backend>(Open(kSize, FileIo::kIoUring)),
      std::shared_ptr<Backend>(std::move(*MemoryBackend::Create(kSize)))};
  for (auto& base : bases) {
    std::vector<uint8_t> golden(kSize);
    for (uint64_t i = 0; i < kSize; ++i)
      golden[i] = static_cast<uint8_t>(i % 251);
    ASSERT_TRUE(base->Write(0, golden, false).ok());
    OverlayOptions o;
    o.file.path = dir_ + "/ov.ovl";
    std::filesystem::remove(o.file.path);
    auto ov = OverlayBackend::Open(o, base);
    ASSERT_TRUE(ov.ok()) << ov.status();
    EXPECT_TRUE((*ov)->caps().async_read);
    std::vector<uint8_t> mine(100 * 1024, 0xEE);
    ASSERT_TRUE((*ov)->Write(64 * 1024, mine, false).ok());        // data run
    ASSERT_TRUE((*ov)->Trim(256 * 1024, 128 * 1024, false).ok());  // zero run
    std::vector<uint8_t> want = golden;
    std::copy(mine.begin(), mine.end(), want.begin() + 64 * 1024);
    std::fill_n(want.begin() + 256 * 1024, 128 * 1024, 0);
    std::vector<std::vector<uint8_t>> got;
    std::vector<std::unique_ptr<Done>> calls;
    const std::pair<uint64_t, uint64_t> reads[] = {
        {0, 1 << 20}, {70 * 1024, 4096}, {300 * 1024, 4096}, {2 << 20, 4096}};
    for (auto [off, len] : reads) {
      got.emplace_back(len);
      calls.push_back(std::make_unique<Done>());
      (*ov)->ReadAsync(off, got.back(), ring_.get(), *calls.back());
    }
    RunUntilDone(calls);
    for (size_t i = 0; i < calls.size(); ++i) {
      ASSERT_TRUE(calls[i]->status->ok()) << *calls[i]->status;
      EXPECT_TRUE(std::equal(got[i].begin(), got[i].end(),
                             want.begin() + reads[i].first))
          << "read " << i;
    }
    ov->reset();
  }
}

}  // namespace
}  // namespace nbdmgr
