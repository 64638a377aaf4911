#include "lib/tls/tls_engine.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <climits>
#include <cstring>

#include "absl/status/status.h"

namespace nbdmgr {

namespace asio = boost::asio;

static_assert(TlsEngine::kRecordRoom >= SSL3_RT_MAX_PLAIN_LENGTH +
                                            SSL3_RT_MAX_ENCRYPTED_OVERHEAD +
                                            SSL3_RT_HEADER_LENGTH,
              "a record must fit in kRecordRoom");
static_assert(TlsEngine::kRecord == SSL3_RT_MAX_PLAIN_LENGTH);
static_assert(TlsEngine::kInputSize >= 2 * TlsEngine::kRecordRoom);

// OpenSSL's side of the engine's buffers: a BIO whose reads take received
// ciphertext from the input buffer and whose writes append to the output
// buffer. An empty input or a full output is "retry", never end of file or
// an error: the engine's caller decides what to do about it.
struct EngineBio {
  static TlsEngine* Of(BIO* b) {
    return static_cast<TlsEngine*>(BIO_get_data(b));
  }

  static int Write(BIO* b, const char* src, int len) {
    BIO_clear_retry_flags(b);
    size_t n = Of(b)->PutOutput(reinterpret_cast<const uint8_t*>(src),
                                static_cast<size_t>(std::max(len, 0)));
    if (n == 0) {
      BIO_set_retry_write(b);
      return -1;
    }
    return static_cast<int>(n);
  }

  static int Read(BIO* b, char* dst, int len) {
    BIO_clear_retry_flags(b);
    size_t n = Of(b)->TakeInput(reinterpret_cast<uint8_t*>(dst),
                                static_cast<size_t>(std::max(len, 0)));
    if (n == 0) {
      BIO_set_retry_read(b);
      return -1;
    }
    return static_cast<int>(n);
  }

  static long Ctrl(BIO*, int cmd, long, void*) {
    // Flushing is the caller's job (it sends PendingOutput); nothing else
    // (kTLS, datagram queries, ...) applies.
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
  }

  static const BIO_METHOD* Method() {
    static BIO_METHOD* const method = [] {
      BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
                                   "nbdmgr TLS engine");
      if (m != nullptr) {
        BIO_meth_set_write(m, &Write);
        BIO_meth_set_read(m, &Read);
        BIO_meth_set_ctrl(m, &Ctrl);
      }
      return m;
    }();
    return method;
  }
};

absl::StatusOr<std::unique_ptr<TlsEngine>> TlsEngine::Create(SSL_CTX* ctx) {
  const BIO_METHOD* method = EngineBio::Method();
  if (method == nullptr) return absl::InternalError("BIO_meth_new failed");
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return absl::InternalError("SSL_new failed");
  BIO* bio = BIO_new(method);
  if (bio == nullptr) {
    SSL_free(ssl);
    return absl::InternalError("BIO_new failed");
  }
  std::unique_ptr<TlsEngine> e(new TlsEngine(ssl));
  BIO_set_data(bio, e.get());
  BIO_set_init(bio, 1);
  SSL_set_bio(ssl, bio, bio);  // one reference, owned by ssl
  SSL_set_accept_state(ssl);
  // One SSL_write encrypts all the records it is given (Seal gives it no
  // more than the output takes; partial writes would return after each
  // record). Unlike asio::ssl::stream, OpenSSL keeps its record buffers
  // between records (no free and malloc per record).
  SSL_set_mode(ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_clear_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_RELEASE_BUFFERS);
  return e;
}

namespace {
std::atomic<uint64_t> live_buffer_bytes{0};
}  // namespace

uint64_t TlsEngine::LiveBufferBytes() {
  return live_buffer_bytes.load(std::memory_order_relaxed);
}

TlsEngine::TlsEngine(SSL* ssl)
    : ssl_(ssl),
      in_(new uint8_t[kInputSize]),
      out_(new uint8_t[kOutputSize]),
      plain_(new uint8_t[kRecord]) {
  live_buffer_bytes.fetch_add(kBufferBytes, std::memory_order_relaxed);
}

TlsEngine::~TlsEngine() {
  SSL_free(ssl_);
  live_buffer_bytes.fetch_sub(kBufferBytes, std::memory_order_relaxed);
}

size_t TlsEngine::TakeInput(uint8_t* dst, size_t n) {
  n = std::min(n, in_end_ - in_pos_);
  std::memcpy(dst, in_.get() + in_pos_, n);
  in_pos_ += n;
  return n;
}

size_t TlsEngine::PutOutput(const uint8_t* src, size_t n) {
  n = std::min(n, kOutputSize - out_end_);
  std::memcpy(out_.get() + out_end_, src, n);
  out_end_ += n;
  return n;
}

std::span<uint8_t> TlsEngine::InputSpace() {
  if (in_pos_ == in_end_) {
    in_pos_ = in_end_ = 0;
  } else if (kInputSize - in_end_ < kRecordRoom && in_pos_ > 0) {
    std::memmove(in_.get(), in_.get() + in_pos_, in_end_ - in_pos_);
    in_end_ -= in_pos_;
    in_pos_ = 0;
  }
  return {in_.get() + in_end_, kInputSize - in_end_};
}

void TlsEngine::InputFilled(size_t n) { in_end_ += n; }

std::span<const uint8_t> TlsEngine::PendingOutput() const {
  return {out_.get() + out_pos_, out_end_ - out_pos_};
}

void TlsEngine::OutputSent(size_t n) {
  out_pos_ += n;
  if (out_pos_ == out_end_) out_pos_ = out_end_ = 0;
}

TlsEngine::Want TlsEngine::Result(int ok, ErrorCode* ec) {
  *ec = ErrorCode();
  if (ok == 1) return Want::kNothing;
  const int err = SSL_get_error(ssl_, ok);
  const unsigned long sys = ERR_get_error();
  switch (err) {
    case SSL_ERROR_WANT_READ:
      return Want::kInput;
    case SSL_ERROR_WANT_WRITE:
      return Want::kOutput;
    case SSL_ERROR_ZERO_RETURN:  // close_notify
      *ec = asio::error::eof;
      break;
    case SSL_ERROR_SSL:
      *ec = ErrorCode(static_cast<int>(sys), asio::error::get_ssl_category());
      break;
    case SSL_ERROR_SYSCALL:
      *ec = sys != 0 ? ErrorCode(static_cast<int>(sys),
                                 asio::error::get_ssl_category())
                     : ErrorCode(asio::ssl::error::unspecified_system_error);
      break;
    default:
      *ec = asio::ssl::error::unexpected_result;
      break;
  }
  return Want::kNothing;
}

TlsEngine::Want TlsEngine::Handshake(ErrorCode* ec) {
  ERR_clear_error();
  return Result(SSL_do_handshake(ssl_), ec);
}

TlsEngine::Want TlsEngine::Read(std::span<uint8_t> dst, size_t* n,
                                ErrorCode* ec) {
  *n = 0;
  if (dst.empty()) {
    *ec = ErrorCode();
    return Want::kNothing;
  }
  // A KeyUpdate reply or an alert this read makes goes to the output
  // (kOutput if that is full): the caller sends it, and retries.
  ERR_clear_error();
  return Result(SSL_read_ex(ssl_, dst.data(), dst.size(), n), ec);
}

TlsEngine::Want TlsEngine::WriteRecords(const uint8_t* data, size_t len,
                                        size_t* n, ErrorCode* ec) {
  // A write OpenSSL asked to retry must be repeated with the same length
  // (its bytes already sit encrypted in OpenSSL's buffer).
  if (retry_len_ != 0) len = retry_len_;
  ERR_clear_error();
  *n = 0;
  const int ok = SSL_write_ex(ssl_, data, len, n);
  const Want want = Result(ok, ec);
  retry_len_ = want == Want::kOutput ? len : 0;
  if (want == Want::kInput && !*ec) {
    // Only renegotiation makes a server's write read, and it is off.
    *ec = asio::ssl::error::unexpected_result;
    return Want::kNothing;
  }
  return want;
}

TlsEngine::Want TlsEngine::Seal(std::span<const asio::const_buffer> buffers,
                                Cursor* at, ErrorCode* ec) {
  *ec = ErrorCode();
  for (;;) {
    while (at->index < buffers.size() &&
           at->offset >= buffers[at->index].size()) {
      ++at->index;
      at->offset = 0;
    }
    const bool end = at->index >= buffers.size();
    const uint8_t* p = nullptr;
    size_t len = 0;
    if (!end) {
      const asio::const_buffer& b = buffers[at->index];
      p = static_cast<const uint8_t*>(b.data()) + at->offset;
      len = b.size() - at->offset;
    }
    const size_t room = kOutputSize - out_end_;
    // The packed bytes become a record when they fill one, at the end of
    // the list, and before a large piece when topping them up would copy
    // more than half a record of it: a reply header then goes out as a
    // short record instead of shifting every record of the data after it
    // (a 1 MiB read of 64 KiB pages would copy one record in four).
    if (plain_fill_ == kRecord ||
        (plain_fill_ > 0 &&
         (end || (len >= kRecord && plain_fill_ < kRecord / 2)))) {
      if (retry_len_ == 0 && room < kRecordRoom) return Want::kOutput;
      size_t n = 0;
      Want w = WriteRecords(plain_.get(), plain_fill_, &n, ec);
      if (*ec || w != Want::kNothing) return w;
      plain_fill_ -= n;
      std::memmove(plain_.get(), plain_.get() + n, plain_fill_);
      continue;
    }
    if (end) return Want::kNothing;
    if (plain_fill_ == 0 && len >= kRecord) {
      // Whole records straight from the caller's buffer, as many as the
      // output takes.
      const size_t records = std::min(len / kRecord, room / kRecordRoom);
      if (retry_len_ == 0 && records == 0) return Want::kOutput;
      size_t n = 0;
      Want w = WriteRecords(p, records * kRecord, &n, ec);
      at->offset += n;
      if (*ec || w != Want::kNothing) return w;
      continue;
    }
    // Pack a small piece (or a large piece's tail, or the top-up of a
    // record more than half full) into plain_.
    const size_t take = std::min(len, kRecord - plain_fill_);
    std::memcpy(plain_.get() + plain_fill_, p, take);
    plain_fill_ += take;
    at->offset += take;
  }
}

TlsEngine::ErrorCode TlsEngine::MapTransportError(const ErrorCode& ec) const {
  if (ec != asio::error::eof) return ec;
  // As asio::ssl::stream: ciphertext left over, or no close_notify, means
  // the stream was cut short.
  if (in_pos_ != in_end_ ||
      (SSL_get_shutdown(ssl_) & SSL_RECEIVED_SHUTDOWN) == 0) {
    return asio::ssl::error::stream_truncated;
  }
  return ec;
}

const char* TlsEngine::protocol() const { return SSL_get_version(ssl_); }
const char* TlsEngine::cipher() const { return SSL_get_cipher_name(ssl_); }

}  // namespace nbdmgr
