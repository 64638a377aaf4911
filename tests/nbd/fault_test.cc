// Backend failures through the real server: a FaultBackend under an export
// served by nbd::Server on a Unix socket, two clients connected to it; and
// how they are counted (backend errors apart from the client's), through a
// session (tests/nbd/harness.h).

#include <sys/socket.h>
#include <sys/un.h>

#include <filesystem>
#include <thread>

#include "lib/backend/fault_backend.h"
#include "lib/backend/memory_backend.h"
#include "lib/buffer/buffer_policy.h"
#include "lib/nbd/server.h"
#include "tests/nbd/harness.h"

namespace nbdmgr::nbd {
namespace {

using testing::Cat;
using testing::RawPeer;
using testing::Str;
using testing::U32;
using Op = FaultBackend::Op;

constexpr uint64_t kSize = 1 << 20;

class FaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("nbdmgr-fault-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    auto mem = MemoryBackend::Create(kSize);
    ASSERT_TRUE(mem.ok());
    auto fault = std::make_unique<FaultBackend>(std::move(*mem));
    fault_ = fault.get();
    ExportConfig c;
    c.name = "disk";
    c.backend = BackendKind::kMemory;
    c.size = kSize;
    auto registry = std::make_shared<ExportRegistry>();
    export_ = Export::FromBackend(c, std::move(fault), buffers_);
    ASSERT_TRUE(registry->Add(export_).ok());
    ServerOptions o;
    o.listen.push_back(*ParseListenAddress("unix:" + (dir_ / "s").string()));
    o.io_threads = 1;  // both clients share one network thread
    o.blocking_threads = 4;
    auto server = Server::Create(o, registry);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    server_->Start();
    a_ = Connect();
    b_ = Connect();
  }
  void TearDown() override {
    a_.reset();
    b_.reset();
    server_->Shutdown(std::chrono::seconds(2));
    std::filesystem::remove_all(dir_);
  }

  std::unique_ptr<RawPeer> Connect() {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::string path = (dir_ / "s").string();
    std::strncpy(sa.sun_path, path.c_str(), sizeof(sa.sun_path) - 1);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    auto p = std::make_unique<RawPeer>(fd);
    p->Hello();
    p->SendOption(kOptStructuredReply, {});
    EXPECT_EQ(p->ReadOptReply().type, kRepAck);
    p->SendOption(kOptGo, Cat({U32(4), Str("disk"), {0, 0}}));
    for (;;) {
      auto r = p->ReadOptReply();
      if (r.type != kRepInfo) {
        EXPECT_EQ(r.type, kRepAck);
        break;
      }
    }
    return p;
  }

  // A READ's outcome: 0 and the data, or the NBD error of its error chunk.
  static std::pair<uint32_t, std::vector<uint8_t>> Read(RawPeer& p,
                                                        uint64_t cookie,
                                                        uint64_t offset,
                                                        uint32_t length) {
    p.SendRequest(kCmdRead, cookie, offset, length);
    return ReadReplyTo(p, cookie, offset, length);
  }
  static std::pair<uint32_t, std::vector<uint8_t>> ReadReplyTo(
      RawPeer& p, uint64_t cookie, uint64_t offset, uint32_t length) {
    std::vector<uint8_t> data(length);
    for (;;) {
      auto c = p.ReadChunk();
      EXPECT_TRUE(c.has_value()) << "connection closed";
      if (!c) return {~0u, {}};
      EXPECT_EQ(c->cookie, cookie);
      if (c->type == kChunkError) return {GetU32(c->payload.data()), {}};
      if (c->type == kChunkOffsetData) {
        uint64_t at = GetU64(c->payload.data()) - offset;
        EXPECT_LE(at + c->payload.size() - 8, data.size());
        if (at + c->payload.size() - 8 > data.size()) return {~0u, {}};
        std::copy(c->payload.begin() + 8, c->payload.end(),
                  data.begin() + static_cast<long>(at));
      }
      if (c->flags & kReplyFlagDone) return {0, data};
    }
  }
  static uint32_t Simple(RawPeer& p, uint16_t type, uint64_t cookie,
                         uint64_t offset, uint32_t length,
                         const std::vector<uint8_t>& payload = {},
                         uint16_t flags = 0) {
    p.SendRequest(type, cookie, offset, length, flags, payload);
    auto r = p.ReadSimpleReply();
    EXPECT_TRUE(r.has_value()) << "connection closed";
    if (!r) return ~0u;
    EXPECT_EQ(r->second, cookie);
    return r->first;
  }

  std::filesystem::path dir_;
  BufferSystem buffers_{32 * 1024 * 1024};
  FaultBackend* fault_ = nullptr;
  std::shared_ptr<Export> export_;
  std::unique_ptr<Server> server_;
  std::unique_ptr<RawPeer> a_, b_;
};

TEST_F(FaultTest, FailedCallsBecomeErrorRepliesAndConnectionsGoOn) {
  const std::vector<uint8_t> data(4096, 0xab);
  ASSERT_EQ(Simple(*a_, kCmdWrite, 1, 0, 4096, data), kOk);

  fault_->Fail(Op::kRead, absl::DataLossError("disk on fire"));
  EXPECT_EQ(Read(*a_, 2, 0, 4096).first, kEio);
  EXPECT_EQ(Read(*a_, 3, 0, 4096), std::make_pair(uint32_t{kOk}, data));
  EXPECT_EQ(Read(*b_, 4, 0, 4096), std::make_pair(uint32_t{kOk}, data));

  fault_->Fail(Op::kWrite, absl::ResourceExhaustedError("no space"));
  EXPECT_EQ(Simple(*a_, kCmdWrite, 5, 8192, 4096, data), kEnospc);
  EXPECT_EQ(Read(*b_, 6, 8192, 4096).second, std::vector<uint8_t>(4096, 0))
      << "a failed write left data behind";
  EXPECT_EQ(Simple(*a_, kCmdWrite, 7, 8192, 4096, data), kOk);

  fault_->Fail(Op::kFlush, absl::InternalError("fsync failed"));
  EXPECT_EQ(Simple(*b_, kCmdFlush, 8, 0, 0), kEio);
  EXPECT_EQ(Simple(*b_, kCmdFlush, 9, 0, 0), kOk);

  fault_->Fail(Op::kTrim, absl::PermissionDeniedError("locked"));
  EXPECT_EQ(Simple(*a_, kCmdTrim, 10, 0, 4096), kEperm);
  fault_->Fail(Op::kZero, absl::UnimplementedError("cannot"), 2);
  EXPECT_EQ(Simple(*a_, kCmdWriteZeroes, 11, 0, 4096), kEnotsup);
  EXPECT_EQ(Simple(*b_, kCmdWriteZeroes, 12, 0, 4096), kEnotsup);
  EXPECT_EQ(Simple(*b_, kCmdWriteZeroes, 13, 0, 4096), kOk);

  // A write that fails with FUA: the error is reported, nothing else.
  fault_->Fail(Op::kWrite, absl::DataLossError("media error"));
  EXPECT_EQ(Simple(*a_, kCmdWrite, 14, 0, 4096, data, kCmdFlagFua), kEio);
  EXPECT_EQ(fault_->injected(Op::kWrite), 2);

  // A failure that persists: every READ fails, both clients stay connected.
  fault_->Fail(Op::kRead, absl::DataLossError("gone"), -1);
  for (uint64_t i = 0; i < 10; ++i) {
    EXPECT_EQ(Read(i % 2 ? *a_ : *b_, 100 + i, 0, 512).first, kEio);
  }
  fault_->Clear();
  EXPECT_EQ(Read(*a_, 200, 8192, 4096), std::make_pair(uint32_t{kOk}, data));
  EXPECT_EQ(Read(*b_, 201, 8192, 4096), std::make_pair(uint32_t{kOk}, data));
}

// A backend that throws (a bug, std::bad_alloc) must not leave its request
// hanging, kill a pool thread or leave the in-flight count raised: the
// request gets EIO and the connection, and the others, go on.
TEST_F(FaultTest, ThrowingBackendCallsAreAnsweredWithEio) {
  const std::vector<uint8_t> data(4096, 0x5a);
  ASSERT_EQ(Simple(*a_, kCmdWrite, 1, 0, 4096, data), kOk);
  fault_->Throw(Op::kRead);
  EXPECT_EQ(Read(*a_, 2, 0, 4096).first, kEio);
  fault_->Throw(Op::kWrite);
  EXPECT_EQ(Simple(*a_, kCmdWrite, 3, 0, 4096, data), kEio);
  fault_->Throw(Op::kFlush);
  EXPECT_EQ(Simple(*a_, kCmdFlush, 4, 0, 0), kEio);
  EXPECT_EQ(fault_->injected(Op::kRead) + fault_->injected(Op::kWrite) +
                fault_->injected(Op::kFlush),
            3);
  EXPECT_EQ(Read(*a_, 5, 0, 4096), std::make_pair(uint32_t{kOk}, data));
  EXPECT_EQ(Read(*b_, 6, 0, 4096), std::make_pair(uint32_t{kOk}, data));
  // Nothing is left in flight: the export's gauge is back to zero.
  EXPECT_EQ(testing::WaitForZero(
                [&] { return export_->io_stats().Snapshot().in_flight; }),
            0u);
}

TEST_F(FaultTest, ASlowCallStallsNeitherItsConnectionNorOthers) {
  const std::vector<uint8_t> data(512, 0x11);
  ASSERT_EQ(Simple(*a_, kCmdWrite, 1, 0, 512, data), kOk);
  fault_->Delay(Op::kFlush, std::chrono::milliseconds(1500));
  // A's FLUSH hangs in the backend; A's READ and all of B's requests,
  // on the same network thread, are answered meanwhile.
  a_->SendRequest(kCmdFlush, 50, 0, 0);
  EXPECT_EQ(Read(*a_, 51, 0, 512), std::make_pair(uint32_t{kOk}, data));
  for (uint64_t i = 0; i < 20; ++i) {
    EXPECT_EQ(Read(*b_, 60 + i, 0, 512), std::make_pair(uint32_t{kOk}, data));
  }
  // Then the flush completes (replies out of order).
  auto r = a_->ReadSimpleReply();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->first, kOk);
  EXPECT_EQ(r->second, 50u);
}

// Which failed requests count as backend errors: those whose error a
// backend call returned (or threw), never those refused by validation.
class BackendErrorCountTest : public testing::SessionFixture {
 protected:
  void Go(bool structured, BufferSettings buffers = {},
          bool read_only = false) {
    auto mem = MemoryBackend::Create(kSize);
    ASSERT_TRUE(mem.ok());
    auto fault = std::make_unique<FaultBackend>(std::move(*mem));
    fault_ = fault.get();
    backend_override_ = std::move(fault);
    StartSession(read_only, buffers);
    GoTo("mem", structured, false);
  }
  // Sends a request and returns the error of its simple reply.
  uint32_t Simple(uint16_t type, uint64_t offset, uint32_t length,
                  const std::vector<uint8_t>& payload = {}) {
    peer().SendRequest(type, ++cookie_, offset, length, 0, payload);
    auto r = peer().ReadSimpleReply();
    EXPECT_TRUE(r.has_value()) << NameOfCommand(type) << ": no reply";
    if (!r) return ~0u;
    EXPECT_EQ(r->second, cookie_);
    return r->first;
  }
  // A structured READ's error (0 if it succeeded).
  uint32_t StructuredRead(uint64_t offset, uint32_t length) {
    peer().SendRequest(kCmdRead, ++cookie_, offset, length);
    for (;;) {
      auto c = peer().ReadChunk();
      EXPECT_TRUE(c.has_value()) << "connection closed";
      if (!c) return ~0u;
      if (c->type == kChunkError) return GetU32(c->payload.data());
      if (c->flags & kReplyFlagDone) return kOk;
    }
  }
  // The export's counters once `n` requests are counted (a reply is
  // counted just after it is written, so the client may see it first).
  IoCounts CountsAfter(uint64_t n) {
    IoCounts c;
    for (int i = 0; i < 500; ++i) {
      c = export_->io_stats().Snapshot();
      if (c.total_requests() >= n) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(c.total_requests(), n);
    return c;
  }
  static uint64_t At(const uint64_t (&counts)[kNumIoOps][kNumIoResults],
                     IoOp op, IoResult r) {
    return counts[static_cast<size_t>(op)][static_cast<size_t>(r)];
  }

  FaultBackend* fault_ = nullptr;
  uint64_t cookie_ = 0;
};

BufferSettings StreamEverything() {
  BufferSettings b;
  b.strategy = BufferStrategy::kStream;
  return b;
}

TEST_F(BackendErrorCountTest, BackendFailuresAreCountedByOpAndError) {
  Go(/*structured=*/false);
  const std::vector<uint8_t> data(4096, 0x42);
  fault_->Fail(Op::kWrite, absl::ResourceExhaustedError("disk full"));
  EXPECT_EQ(Simple(kCmdWrite, 0, 4096, data), kEnospc);
  fault_->Fail(Op::kRead, absl::DataLossError("bad sector"));
  EXPECT_EQ(Simple(kCmdRead, 0, 4096), kEio);
  fault_->Fail(Op::kFlush, absl::UnavailableError("fenced"));
  EXPECT_EQ(Simple(kCmdFlush, 0, 0), kEshutdown);
  // A backend's EPERM (a lost lock) is the backend's, unlike a read-only
  // export's.
  fault_->Fail(Op::kTrim, absl::PermissionDeniedError("lock lost"));
  EXPECT_EQ(Simple(kCmdTrim, 0, 4096), kEperm);
  fault_->Throw(Op::kZero);  // a bug in the backend: EIO, counted too
  EXPECT_EQ(Simple(kCmdWriteZeroes, 0, 4096), kEio);
  EXPECT_EQ(Simple(kCmdWrite, 0, 4096, data), kOk);

  IoCounts c = CountsAfter(6);
  const auto& be = c.backend_errors;
  EXPECT_EQ(At(be, IoOp::kWrite, IoResult::kEnospc), 1u);
  EXPECT_EQ(At(be, IoOp::kRead, IoResult::kEio), 1u);
  EXPECT_EQ(At(be, IoOp::kFlush, IoResult::kEshutdown), 1u);
  EXPECT_EQ(At(be, IoOp::kTrim, IoResult::kEperm), 1u);
  EXPECT_EQ(At(be, IoOp::kWriteZeroes, IoResult::kEio), 1u);
  EXPECT_EQ(c.backend_errors_total(), 5u);
  EXPECT_EQ(c.errors(), 5u);
  EXPECT_EQ(At(c.requests, IoOp::kWrite, IoResult::kOk), 1u);
}

TEST_F(BackendErrorCountTest, ValidationErrorsAreNotBackendErrors) {
  Go(/*structured=*/true);
  EXPECT_EQ(StructuredRead(kSize, 512), kEinval);  // past the end
  EXPECT_EQ(Simple(kCmdWrite, kSize - 10, 512, std::vector<uint8_t>(512)),
            kEnospc);                          // past the end
  EXPECT_EQ(Simple(42, 0, 1), kEinval);        // unknown command
  EXPECT_EQ(Simple(kCmdTrim, 0, 0), kEinval);  // zero length
  // Armed faults are never reached.
  fault_->Fail(Op::kRead, absl::DataLossError("unused"), -1);
  fault_->Fail(Op::kWrite, absl::DataLossError("unused"), -1);
  EXPECT_EQ(StructuredRead(kSize - 1, 2), kEinval);

  IoCounts c = CountsAfter(5);
  EXPECT_EQ(At(c.requests, IoOp::kRead, IoResult::kEinval), 2u);
  EXPECT_EQ(At(c.requests, IoOp::kWrite, IoResult::kEnospc), 1u);
  EXPECT_EQ(At(c.requests, IoOp::kOther, IoResult::kEinval), 1u);
  EXPECT_EQ(c.errors(), 5u);
  EXPECT_EQ(c.backend_errors_total(), 0u);
  EXPECT_EQ(fault_->injected(Op::kRead) + fault_->injected(Op::kWrite), 0);
}

TEST_F(BackendErrorCountTest, WriteOnReadOnlyExportIsNotABackendError) {
  Go(/*structured=*/false, {}, /*read_only=*/true);
  EXPECT_EQ(Simple(kCmdWrite, 0, 512, std::vector<uint8_t>(512)), kEperm);
  EXPECT_EQ(Simple(kCmdTrim, 0, 512), kEperm);
  IoCounts c = CountsAfter(2);
  EXPECT_EQ(At(c.requests, IoOp::kWrite, IoResult::kEperm), 1u);
  EXPECT_EQ(At(c.requests, IoOp::kTrim, IoResult::kEperm), 1u);
  EXPECT_EQ(c.backend_errors_total(), 0u);
}

// A WRITE streamed through chunks (no request-sized buffer) whose backend
// write fails part way: one error reply, counted once.
TEST_F(BackendErrorCountTest, FailedStreamedWriteCountsOnce) {
  Go(/*structured=*/false, StreamEverything());
  const std::vector<uint8_t> data(3 * kStreamChunk + 100, 0x7e);
  const uint32_t len = static_cast<uint32_t>(data.size());
  EXPECT_EQ(Simple(kCmdWrite, 0, len, data), kOk);
  ASSERT_GT(export_->buffers().stats().streamed, 0u) << "did not stream";
  // Every chunk's write fails; the rest of the payload is drained.
  fault_->Fail(Op::kWrite, absl::ResourceExhaustedError("disk full"), -1);
  EXPECT_EQ(Simple(kCmdWrite, 0, len, data), kEnospc);
  EXPECT_EQ(fault_->injected(Op::kWrite), 1);
  fault_->Clear();
  // The connection is still in sync.
  EXPECT_EQ(Simple(kCmdWrite, 0, len, data), kOk);
  EXPECT_EQ(Simple(kCmdFlush, 0, 0), kOk);

  IoCounts c = CountsAfter(4);
  EXPECT_EQ(At(c.requests, IoOp::kWrite, IoResult::kEnospc), 1u);
  EXPECT_EQ(At(c.backend_errors, IoOp::kWrite, IoResult::kEnospc), 1u);
  EXPECT_EQ(c.backend_errors_total(), 1u);
  EXPECT_GE(export_->buffers().stats().streamed, 3u);
}

// A READ streamed through chunks whose backend read fails: its error
// reply (an error chunk) counts as the backend's.
TEST_F(BackendErrorCountTest, FailedStreamedReadCountsOnce) {
  Go(/*structured=*/true, StreamEverything());
  const uint32_t len = 3 * kStreamChunk;
  EXPECT_EQ(StructuredRead(0, len), kOk);
  fault_->Fail(Op::kRead, absl::DataLossError("bad sector"));
  EXPECT_EQ(StructuredRead(0, len), kEio);
  EXPECT_EQ(StructuredRead(0, len), kOk);
  IoCounts c = CountsAfter(3);
  EXPECT_EQ(At(c.requests, IoOp::kRead, IoResult::kEio), 1u);
  EXPECT_EQ(At(c.backend_errors, IoOp::kRead, IoResult::kEio), 1u);
  EXPECT_EQ(c.backend_errors_total(), 1u);
  EXPECT_GE(export_->buffers().stats().streamed, 3u);
}

}  // namespace
}  // namespace nbdmgr::nbd
