// TlsEngine against an OpenSSL client over memory BIOs, with the bytes
// pumped between them by hand: gather lists become full records, output
// that does not fit waits for room, input arriving a byte at a time is
// decrypted once whole, and the end of a stream maps as Asio's ssl::stream
// maps it. TLS 1.2 and 1.3.

#include "lib/tls/tls_engine.h"

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <boost/asio/error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <random>
#include <vector>

#include "tests/tls/test_credentials.h"

namespace nbdmgr {
namespace {

namespace asio = boost::asio;
using ErrorCode = boost::system::error_code;
using Want = TlsEngine::Want;

std::vector<uint8_t> Pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

class TlsEngineTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    server_ctx_ = testing::TestServerContext();
    client_ctx_ = testing::TestClientContext(GetParam());
    auto e = TlsEngine::Create(server_ctx_->native_handle());
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
    client_ = SSL_new(client_ctx_.get());
    to_client_ = BIO_new(BIO_s_mem());
    from_client_ = BIO_new(BIO_s_mem());
    SSL_set_bio(client_, to_client_, from_client_);
    SSL_set_connect_state(client_);
    Handshake();
  }
  void TearDown() override { SSL_free(client_); }

  // Moves the engine's output to the client; returns how many bytes.
  size_t ToClient() {
    std::span<const uint8_t> out = engine_->PendingOutput();
    size_t n = out.size();
    if (n > 0) {
      EXPECT_EQ(BIO_write(to_client_, out.data(), static_cast<int>(n)),
                static_cast<int>(n));
      engine_->OutputSent(n);
    }
    return n;
  }
  // Moves up to `max` bytes of the client's output to the engine.
  size_t ToServer(size_t max = SIZE_MAX) {
    size_t moved = 0;
    while (moved < max) {
      std::span<uint8_t> space = engine_->InputSpace();
      int n = BIO_read(from_client_, space.data(),
                       static_cast<int>(std::min(space.size(), max - moved)));
      if (n <= 0) break;
      engine_->InputFilled(static_cast<size_t>(n));
      moved += static_cast<size_t>(n);
    }
    return moved;
  }

  void Handshake() {
    for (int i = 0; i < 20; ++i) {
      int c = SSL_do_handshake(client_);
      ToServer();
      ErrorCode ec;
      Want w = engine_->Handshake(&ec);
      ASSERT_FALSE(ec) << ec.message();
      ToClient();
      if (c == 1 && w == Want::kNothing) return;
    }
    FAIL() << "handshake did not finish";
  }

  // Reads everything the client can decrypt now.
  std::vector<uint8_t> ClientReadAll() {
    std::vector<uint8_t> got;
    uint8_t buf[4096];
    for (;;) {
      int n = SSL_read(client_, buf, sizeof(buf));
      if (n <= 0) break;
      got.insert(got.end(), buf, buf + n);
    }
    return got;
  }

  // Application-data records in the engine's pending output.
  int CountRecords() {
    std::span<const uint8_t> out = engine_->PendingOutput();
    int records = 0;
    for (size_t at = 0; at + 5 <= out.size();) {
      EXPECT_EQ(out[at], 23) << "record type at " << at;
      at += 5 + ((size_t{out[at + 3]} << 8) | out[at + 4]);
      ++records;
    }
    return records;
  }

  std::unique_ptr<asio::ssl::context> server_ctx_;
  testing::ClientContext client_ctx_;
  std::unique_ptr<TlsEngine> engine_;
  SSL* client_ = nullptr;
  BIO* to_client_ = nullptr;    // owned by client_
  BIO* from_client_ = nullptr;  // owned by client_
};

// 32 replies of a 16-byte header and 4 KiB of data: nine records (eight
// full ones), not 64.
TEST_P(TlsEngineTest, SealPacksSmallPiecesIntoFullRecords) {
  std::vector<std::vector<uint8_t>> pieces;
  std::vector<uint8_t> expected;
  std::vector<asio::const_buffer> iov;
  for (int i = 0; i < 64; ++i) {
    pieces.push_back(Pattern(i % 2 == 0 ? 16 : 4096, i));
    expected.insert(expected.end(), pieces.back().begin(), pieces.back().end());
  }
  for (const auto& p : pieces) iov.emplace_back(p.data(), p.size());
  TlsEngine::Cursor at;
  ErrorCode ec;
  EXPECT_EQ(engine_->Seal(iov, &at, &ec), Want::kNothing);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_EQ(at.index, iov.size());
  EXPECT_EQ(CountRecords(), 9);
  ToClient();
  EXPECT_TRUE(ClientReadAll() == expected);
}

// A reply header before 64 KiB pages of data: a short record of its own,
// then whole records straight from each page (17, not 18 with every
// record shifted by the header).
TEST_P(TlsEngineTest, SealSendsAHeaderBeforeLargePiecesAsItsOwnRecord) {
  const std::vector<uint8_t> head = Pattern(16, 1);
  std::vector<std::vector<uint8_t>> pages;
  std::vector<asio::const_buffer> iov = {asio::buffer(head)};
  std::vector<uint8_t> expected(head);
  for (int i = 0; i < 4; ++i) {
    pages.push_back(Pattern(64 * 1024, 10 + i));
    iov.push_back(asio::buffer(pages.back()));
    expected.insert(expected.end(), pages.back().begin(), pages.back().end());
  }
  TlsEngine::Cursor at;
  std::vector<uint8_t> got;
  int records = 0;
  for (int rounds = 0;; ++rounds) {
    ASSERT_LT(rounds, 10);
    ErrorCode ec;
    Want w = engine_->Seal(iov, &at, &ec);
    ASSERT_FALSE(ec) << ec.message();
    if (rounds == 0) {
      std::span<const uint8_t> out = engine_->PendingOutput();
      ASSERT_GT(out.size(), 5u);
      EXPECT_LT((size_t{out[3]} << 8) | out[4], 100u) << "first record";
    }
    records += CountRecords();
    ToClient();
    std::vector<uint8_t> part = ClientReadAll();
    got.insert(got.end(), part.begin(), part.end());
    if (w == Want::kNothing) break;
  }
  EXPECT_EQ(records, 17);
  EXPECT_TRUE(got == expected);
}

// A piece larger than the output buffer: Seal stops when it is full and
// goes on after it is sent, whole records straight from the piece.
TEST_P(TlsEngineTest, SealWaitsForOutputRoom) {
  const std::vector<uint8_t> head = Pattern(16, 1);
  const std::vector<uint8_t> big = Pattern(2 * 1024 * 1024 + 5, 2);
  std::vector<asio::const_buffer> iov = {asio::buffer(head), asio::buffer(big)};
  std::vector<uint8_t> expected(head);
  expected.insert(expected.end(), big.begin(), big.end());
  TlsEngine::Cursor at;
  std::vector<uint8_t> got;
  int rounds = 0;
  for (;; ++rounds) {
    ASSERT_LT(rounds, 1000);
    ErrorCode ec;
    Want w = engine_->Seal(iov, &at, &ec);
    ASSERT_FALSE(ec) << ec.message();
    EXPECT_LE(engine_->PendingOutput().size(), TlsEngine::kOutputSize);
    ToClient();
    std::vector<uint8_t> part = ClientReadAll();
    got.insert(got.end(), part.begin(), part.end());
    if (w == Want::kNothing) break;
    EXPECT_EQ(w, Want::kOutput);
  }
  EXPECT_GT(rounds, 10);
  EXPECT_TRUE(got == expected);
}

// Empty buffers and an empty list are fine and make no record.
TEST_P(TlsEngineTest, SealSkipsEmptyBuffers) {
  std::vector<asio::const_buffer> iov = {asio::const_buffer(),
                                         asio::const_buffer()};
  TlsEngine::Cursor at;
  ErrorCode ec;
  EXPECT_EQ(engine_->Seal(iov, &at, &ec), Want::kNothing);
  EXPECT_FALSE(ec);
  EXPECT_TRUE(engine_->PendingOutput().empty());
  TlsEngine::Cursor start;
  EXPECT_EQ(engine_->Seal({}, &start, &ec), Want::kNothing);
  EXPECT_TRUE(engine_->PendingOutput().empty());
}

// Records arriving one byte at a time: kInput until a record is whole,
// then its bytes, in order.
TEST_P(TlsEngineTest, ReadsRecordsArrivingByteByByte) {
  const std::vector<uint8_t> sent = Pattern(40000, 3);
  ASSERT_EQ(SSL_write(client_, sent.data(), static_cast<int>(sent.size())),
            static_cast<int>(sent.size()));
  std::vector<uint8_t> got;
  int waits = 0;
  while (got.size() < sent.size()) {
    uint8_t buf[20000];
    size_t n = 0;
    ErrorCode ec;
    Want w = engine_->Read(buf, &n, &ec);
    ASSERT_FALSE(ec) << ec.message();
    got.insert(got.end(), buf, buf + n);
    if (w == Want::kInput) {
      ++waits;
      ASSERT_EQ(ToServer(1), 1u) << "engine wants more than was sent";
    } else {
      EXPECT_GT(n, 0u);
    }
  }
  EXPECT_GT(waits, 1000);
  EXPECT_TRUE(got == sent);
}

// The client's close_notify reads as eof; the transport's end after it is
// eof too.
TEST_P(TlsEngineTest, CloseNotifyIsEof) {
  const std::vector<uint8_t> sent = Pattern(100, 4);
  SSL_write(client_, sent.data(), static_cast<int>(sent.size()));
  SSL_shutdown(client_);
  ToServer();
  uint8_t buf[200];
  size_t n = 0;
  ErrorCode ec;
  EXPECT_EQ(engine_->Read(buf, &n, &ec), Want::kNothing);
  EXPECT_EQ(n, sent.size());
  EXPECT_FALSE(ec);
  engine_->Read(buf, &n, &ec);
  EXPECT_EQ(ec, asio::error::eof) << ec.message();
  EXPECT_EQ(engine_->MapTransportError(asio::error::eof), asio::error::eof);
}

// The transport ending without close_notify is a truncated stream; other
// transport errors pass through.
TEST_P(TlsEngineTest, TransportEndWithoutCloseNotifyIsTruncation) {
  EXPECT_EQ(engine_->MapTransportError(asio::error::eof),
            asio::ssl::error::stream_truncated);
  EXPECT_EQ(engine_->MapTransportError(asio::error::connection_reset),
            asio::error::connection_reset);
  // Half a record received, then the end: truncated as well.
  const std::vector<uint8_t> sent = Pattern(1000, 5);
  SSL_write(client_, sent.data(), static_cast<int>(sent.size()));
  ToServer(500);
  EXPECT_EQ(engine_->MapTransportError(asio::error::eof),
            asio::ssl::error::stream_truncated);
}

// Garbage instead of a record: an error in the SSL category, and an alert
// to send.
TEST_P(TlsEngineTest, GarbageIsAnSslErrorWithAnAlert) {
  std::span<uint8_t> space = engine_->InputSpace();
  const std::vector<uint8_t> junk = Pattern(64, 6);
  std::copy(junk.begin(), junk.end(), space.begin());
  engine_->InputFilled(junk.size());
  uint8_t buf[100];
  size_t n = 0;
  ErrorCode ec;
  engine_->Read(buf, &n, &ec);
  EXPECT_EQ(ec.category(), asio::error::get_ssl_category()) << ec.message();
  EXPECT_FALSE(engine_->PendingOutput().empty());
}

INSTANTIATE_TEST_SUITE_P(Versions, TlsEngineTest,
                         ::testing::Values(TLS1_2_VERSION, TLS1_3_VERSION),
                         [](const auto& info) {
                           return info.param == TLS1_2_VERSION ? "Tls12"
                                                               : "Tls13";
                         });

}  // namespace
}  // namespace nbdmgr
