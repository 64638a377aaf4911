#ifndef NBDMGR_TESTS_NBD_HARNESS_H_
#define NBDMGR_TESTS_NBD_HARNESS_H_

// Test harness: the server side runs real nbdmgr code on an io_context
// thread over one end of a socketpair; the test speaks raw bytes on the
// other end with blocking calls (each bounded by a timeout).

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <functional>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "lib/backend/io_ring.h"
#include "lib/backend/memory_backend.h"
#include "lib/buffer/buffer_policy.h"
#include "lib/export/export_registry.h"
#include "lib/nbd/codec.h"
#include "lib/nbd/connection.h"
#include "lib/nbd/session.h"

namespace nbdmgr::nbd::testing {

// Bytes helpers.
inline std::vector<uint8_t> U32(uint32_t v) {
  std::vector<uint8_t> b(4);
  PutU32(b.data(), v);
  return b;
}
inline std::vector<uint8_t> Cat(
    std::initializer_list<std::vector<uint8_t>> parts) {
  std::vector<uint8_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}
inline std::vector<uint8_t> Str(std::string_view s) {
  return {s.begin(), s.end()};
}

// The test's end of the socketpair.
class RawPeer {
 public:
  explicit RawPeer(int fd) : fd_(fd) {}
  ~RawPeer() {
    if (fd_ >= 0) ::close(fd_);
  }

  void Write(const std::vector<uint8_t>& b) {
    size_t done = 0;
    while (done < b.size()) {
      ssize_t n = ::send(fd_, b.data() + done, b.size() - done, MSG_NOSIGNAL);
      ASSERT_GT(n, 0) << "peer write failed";
      done += static_cast<size_t>(n);
    }
  }
  // Reads exactly n bytes; returns nullopt on EOF/timeout.
  std::optional<std::vector<uint8_t>> Read(size_t n, int timeout_ms = 5000) {
    std::vector<uint8_t> b(n);
    size_t done = 0;
    while (done < n) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, timeout_ms) <= 0) return std::nullopt;
      ssize_t r = ::recv(fd_, b.data() + done, n - done, 0);
      if (r <= 0) return std::nullopt;
      done += static_cast<size_t>(r);
    }
    return b;
  }
  // True if the server closed the connection (EOF) within the timeout.
  bool SeesEof(int timeout_ms = 5000) {
    for (;;) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, timeout_ms) <= 0) return false;
      uint8_t c;
      ssize_t r = ::recv(fd_, &c, 1, 0);
      if (r <= 0) return true;
    }
  }

  // Option reply: {option, type, payload}.
  struct OptReply {
    uint32_t option = 0, type = 0;
    std::vector<uint8_t> data;
  };
  OptReply ReadOptReply() {
    OptReply r;
    auto h = Read(kOptionReplyHeaderSize);
    EXPECT_TRUE(h.has_value()) << "no option reply";
    if (!h) return r;
    EXPECT_EQ(GetU64(h->data()), kOptionReplyMagic);
    r.option = GetU32(h->data() + 8);
    r.type = GetU32(h->data() + 12);
    uint32_t len = GetU32(h->data() + 16);
    if (len > 0) r.data = Read(len).value_or(std::vector<uint8_t>{});
    return r;
  }
  void SendOption(uint32_t option, const std::vector<uint8_t>& data) {
    std::vector<uint8_t> h(16);
    PutU64(h.data(), kIHaveOpt);
    PutU32(h.data() + 8, option);
    PutU32(h.data() + 12, static_cast<uint32_t>(data.size()));
    Write(Cat({h, data}));
  }
  // Greeting + client flags.
  void Hello(uint32_t client_flags = kClientFlagFixedNewstyle |
                                     kClientFlagNoZeroes) {
    auto g = Read(kGreetingSize);
    ASSERT_TRUE(g.has_value());
    ASSERT_EQ(GetU64(g->data()), kNbdMagic);
    ASSERT_EQ(GetU64(g->data() + 8), kIHaveOpt);
    Write(U32(client_flags));
  }
  void SendRequest(uint16_t type, uint64_t cookie, uint64_t offset,
                   uint32_t length, uint16_t flags = 0,
                   const std::vector<uint8_t>& payload = {}) {
    RequestHeader h{flags, type, cookie, offset, length};
    auto raw = EncodeRequestHeader(h);
    Write(Cat({std::vector<uint8_t>(raw.begin(), raw.end()), payload}));
  }
  // Simple reply: {error, cookie}.
  std::optional<std::pair<uint32_t, uint64_t>> ReadSimpleReply() {
    auto r = Read(kSimpleReplySize);
    if (!r) return std::nullopt;
    EXPECT_EQ(GetU32(r->data()), kSimpleReplyMagic);
    return std::make_pair(GetU32(r->data() + 4), GetU64(r->data() + 8));
  }
  struct Chunk {
    uint16_t flags = 0, type = 0;
    uint64_t cookie = 0;
    std::vector<uint8_t> payload;
  };
  std::optional<Chunk> ReadChunk() {
    auto h = Read(kChunkHeaderSize);
    if (!h) return std::nullopt;
    EXPECT_EQ(GetU32(h->data()), kStructuredReplyMagic);
    Chunk c{GetU16(h->data() + 4),
            GetU16(h->data() + 6),
            GetU64(h->data() + 8),
            {}};
    uint32_t len = GetU32(h->data() + 16);
    if (len > 0) c.payload = Read(len).value_or(std::vector<uint8_t>{});
    return c;
  }
  // Reads a structured READ reply of `length` bytes at `offset` sent as
  // OFFSET_DATA chunks into one buffer; counts the chunks in `*chunks`.
  // nullopt (and a test failure) on anything else.
  std::optional<std::vector<uint8_t>> ReadDataChunks(uint64_t offset,
                                                     size_t length,
                                                     int* chunks) {
    std::vector<uint8_t> got(length);
    *chunks = 0;
    for (;;) {
      auto c = ReadChunk();
      EXPECT_TRUE(c.has_value());
      if (!c) return std::nullopt;
      EXPECT_EQ(c->type, kChunkOffsetData);
      if (c->type != kChunkOffsetData || c->payload.size() < 8) {
        return std::nullopt;
      }
      uint64_t at = GetU64(c->payload.data()) - offset;
      EXPECT_LE(at + c->payload.size() - 8, length);
      if (at + c->payload.size() - 8 > length) return std::nullopt;
      std::copy(c->payload.begin() + 8, c->payload.end(),
                got.begin() + static_cast<long>(at));
      ++*chunks;
      if (c->flags & kReplyFlagDone) return got;
    }
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

// Polls `value` until it reads 0, for at most 2 s; returns the last value.
// For counters that drop just after the client saw the bytes they cover
// (a reply's memory comes back once its write has completed).
inline uint64_t WaitForZero(const std::function<uint64_t()>& value) {
  uint64_t v = value();
  for (int i = 0; i < 200 && v != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    v = value();
  }
  return v;
}

// An io_context thread plus a socketpair; the server end becomes a Socket.
class ServerThread {
 public:
  ServerThread() : guard_(boost::asio::make_work_guard(ioc_)) {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    server_fd_ = sv[0];
    peer_ = std::make_unique<RawPeer>(sv[1]);
    if (IoRing::Supported()) {
      auto ring = IoRing::Create(ioc_);
      EXPECT_TRUE(ring.ok()) << ring.status();
      if (ring.ok()) ring_ = *ring;
    }
    thread_ = std::thread([this] { ioc_.run(); });
  }
  ~ServerThread() {
    peer_.reset();  // closes the client end: the server sees EOF
    // The ring's wait on its descriptor is work that would keep run()
    // going: close the ring on its thread, after what is queued there.
    boost::asio::post(ioc_, [this] { ring_.reset(); });
    guard_.reset();
    thread_.join();
    pool_.join();
  }
  Socket TakeSocket() {
    return Socket(ioc_,
                  boost::asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM),
                  server_fd_);
  }
  boost::asio::io_context& ioc() { return ioc_; }
  boost::asio::thread_pool& pool() { return pool_; }
  // The thread's io_uring (null where unavailable): file exports use it.
  IoRing* ring() { return ring_.get(); }
  RawPeer& peer() { return *peer_; }
  void ClosePeer() { peer_.reset(); }

 private:
  boost::asio::io_context ioc_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type>
      guard_;
  boost::asio::thread_pool pool_{2};
  std::shared_ptr<IoRing> ring_;
  int server_fd_ = -1;
  std::unique_ptr<RawPeer> peer_;
  std::thread thread_;
};

// A registry with one export "mem" (default) of kSize bytes, sparse memory
// unless asked otherwise, plus a session serving the socketpair.
class SessionFixture : public ::testing::Test {
 protected:
  static constexpr uint64_t kSize = 4 * 1024 * 1024;

  // `backend`: kMemory, or kFile (a new file under the test's temp dir:
  // blocking, read through buffers rather than zero-copy).
  void StartSession(bool read_only = false, BufferSettings buffers = {},
                    BackendKind backend = BackendKind::kMemory) {
    ExportConfig c;
    c.name = "mem";
    c.backend = backend;
    c.size = kSize;
    if (backend == BackendKind::kFile) {
      c.path = ::testing::TempDir() + "/nbdmgr-session-" +
               std::to_string(::getpid()) + ".img";
      ::unlink(c.path.c_str());
      file_path_ = c.path;
    }
    c.read_only = read_only;
    c.description = "test disk";
    c.buffers = buffers;
    if (backend_override_ != nullptr) {
      export_ =
          Export::FromBackend(c, std::move(backend_override_), buffer_system_);
    } else {
      auto e = Export::Create(c, buffer_system_);
      ASSERT_TRUE(e.ok()) << e.status();
      export_ = *e;
    }
    ASSERT_TRUE(registry_.Add(export_).ok());
    registry_.SetDefault("mem");
    SessionOptions opts = session_options_;
    opts.transmission.blocking_pool = &server_.pool();
    opts.transmission.ring = server_.ring();
    opts.server_stats = &server_stats_;
    session_ = std::make_shared<Session>(server_.TakeSocket(), registry_, opts);
    boost::asio::co_spawn(server_.ioc(), session_->Run(),
                          [this](std::exception_ptr) { done_.set_value(); });
  }
  // Handshake up to transmission via GO on `name`.
  void GoTo(const std::string& name, bool structured, bool meta) {
    RawPeer& p = peer();
    p.Hello();
    if (structured) {
      p.SendOption(kOptStructuredReply, {});
      ASSERT_EQ(p.ReadOptReply().type, kRepAck);
    }
    if (meta) {
      p.SendOption(kOptSetMetaContext,
                   Cat({U32(static_cast<uint32_t>(name.size())), Str(name),
                        U32(1), U32(15), Str("base:allocation")}));
      auto r = p.ReadOptReply();
      ASSERT_EQ(r.type, kRepMetaContext);
      ASSERT_EQ(p.ReadOptReply().type, kRepAck);
    }
    std::vector<uint8_t> go = Cat({U32(static_cast<uint32_t>(name.size())),
                                   Str(name), std::vector<uint8_t>{0, 0}});
    p.SendOption(kOptGo, go);
    for (;;) {
      auto r = p.ReadOptReply();
      if (r.type == kRepAck) break;
      ASSERT_EQ(r.type, kRepInfo);
    }
  }
  void TearDown() override {
    if (session_ != nullptr) {
      server_.ClosePeer();
      EXPECT_TRUE(SessionEnds())
          << "session did not end after the client closed";
    }
    if (!file_path_.empty()) ::unlink(file_path_.c_str());
  }
  // Waits for the session to end; false on timeout.
  bool SessionEnds() {
    if (!ended_) {
      ended_ = done_future_.wait_for(std::chrono::seconds(5)) ==
               std::future_status::ready;
    }
    return ended_;
  }
  RawPeer& peer() { return server_.peer(); }

  ServerThread server_;
  // Set before StartSession to change the session's limits.
  SessionOptions session_options_;
  // Set before StartSession to serve this backend (as a kMemory export).
  std::unique_ptr<Backend> backend_override_;
  ServerStats server_stats_;
  BufferSystem buffer_system_{32 * 1024 * 1024};
  ExportRegistry registry_;
  std::shared_ptr<Export> export_;
  std::shared_ptr<Session> session_;
  std::promise<void> done_;
  std::future<void> done_future_ = done_.get_future();
  bool ended_ = false;
  std::string file_path_;  // the kFile export's image, removed at the end
};

}  // namespace nbdmgr::nbd::testing

#endif  // NBDMGR_TESTS_NBD_HARNESS_H_
