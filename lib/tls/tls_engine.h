#ifndef NBDMGR_LIB_TLS_TLS_ENGINE_H_
#define NBDMGR_LIB_TLS_TLS_ENGINE_H_

#include <boost/asio/buffer.hpp>
#include <boost/system/error_code.hpp>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/statusor.h"

struct ssl_st;      // OpenSSL's SSL
struct ssl_ctx_st;  // OpenSSL's SSL_CTX

namespace nbdmgr {

// The server side of one TLS session, without I/O ("sans-I/O"): OpenSSL
// reads ciphertext from an input buffer the caller fills from the socket,
// and writes ciphertext to an output buffer the caller sends. The caller
// owns the socket and decides when to receive and send; this class never
// blocks and never makes a system call.
//
// Why not asio::ssl::stream: its write hands SSL_write only the first
// buffer of a gather list, and flushes each record to the socket through a
// 17 KiB BIO pair, so a batch of N replies cost 2N SSL_write calls, 2N
// small records and at least 2N sends; and each 16 KiB record read cost a
// recv. Here a batch of replies is packed into full 16 KiB records and sent
// with one send per `kOutputSize` bytes, and one recv takes up to
// `kInputSize` bytes of records.
//
// Memory: kInputSize + kOutputSize + kRecord bytes of buffers per session
// (about 240 KiB), allocated by Create, plus OpenSSL's own record buffers
// (about 34 KiB). Nothing grows.
//
// Errors are boost::system::error_code values mapped as Asio's ssl::stream
// maps them, so callers see the same codes: a TLS failure is in
// asio::error::get_ssl_category(); the peer's close_notify is
// asio::error::eof; end of the transport without close_notify is
// asio::ssl::error::stream_truncated (see MapTransportError). This class
// never sends close_notify.
//
// Not thread-safe. Output appended while the caller is sending earlier
// output goes after it: PendingOutput() may grow between calls, but bytes
// already returned stay where they are until OutputSent() covers them.
class TlsEngine {
 public:
  using ErrorCode = boost::system::error_code;

  // Plaintext bytes per record (TLS's maximum).
  static constexpr size_t kRecord = 16 * 1024;
  // Room one record of kRecord plaintext bytes may take as ciphertext, for
  // any TLS 1.2 or 1.3 cipher suite (header, explicit IV, MAC or tag,
  // padding).
  static constexpr size_t kRecordRoom = kRecord + 512;
  // Ciphertext received but not yet decrypted.
  static constexpr size_t kInputSize = 64 * 1024;
  // Ciphertext made but not yet sent: ten records, enough for one batch of
  // 32 4 KiB replies.
  static constexpr size_t kOutputSize = 10 * kRecordRoom;

  // What a handshake, read or write step needs next.
  enum class Want {
    kNothing,  // done: the step finished (Read/Write moved bytes)
    kInput,    // more ciphertext: receive into InputSpace() and retry
    kOutput,   // output room: send PendingOutput() and retry
  };

  // A server-side session using `ctx` (its certificate, key, PSK callback
  // and verify settings). `ctx` must outlive the engine. Internal if
  // OpenSSL cannot allocate the session.
  static absl::StatusOr<std::unique_ptr<TlsEngine>> Create(ssl_ctx_st* ctx);
  ~TlsEngine();
  TlsEngine(const TlsEngine&) = delete;
  TlsEngine& operator=(const TlsEngine&) = delete;

  // One step of the handshake. kNothing once it is complete. On error
  // (`*ec` set) PendingOutput() may hold an alert worth sending.
  Want Handshake(ErrorCode* ec);

  // Decrypts up to dst.size() bytes into dst: `*n` bytes moved (those of one
  // record at most). kNothing if some bytes moved or `*ec` is set
  // (asio::error::eof after the peer's close_notify).
  Want Read(std::span<uint8_t> dst, size_t* n, ErrorCode* ec);

  // Position in a gather list: the next byte to encrypt is byte `offset` of
  // buffer `index`.
  struct Cursor {
    size_t index = 0;
    size_t offset = 0;
  };
  // Encrypts bytes of `buffers` from `*at` into the output buffer until all
  // are in (kNothing, `*at` at the end) or the output is full (kOutput).
  // Small pieces are packed together into full records (copied once);
  // whole records of large pieces are encrypted from where they are, and
  // less than half a record of small pieces before a large one goes out as
  // a short record. The last record of the list may be short: nothing is
  // held back for a later call.
  Want Seal(std::span<const boost::asio::const_buffer> buffers, Cursor* at,
            ErrorCode* ec);

  // Where the caller puts received ciphertext (never empty: a full input
  // buffer means OpenSSL wants more than TLS allows, an error the next
  // step reports), then InputFilled(n) for the `n` bytes put there.
  std::span<uint8_t> InputSpace();
  void InputFilled(size_t n);

  // Ciphertext to send, oldest first; then OutputSent(n) for the `n`
  // bytes sent.
  std::span<const uint8_t> PendingOutput() const;
  void OutputSent(size_t n);

  // The error a read or handshake reports when the transport itself failed
  // with `ec`: asio::ssl::error::stream_truncated for the transport's end
  // of stream unless the peer's close_notify arrived (then eof); any other
  // code unchanged.
  ErrorCode MapTransportError(const ErrorCode& ec) const;

  // Bytes of buffers an engine holds for its whole life (input, output
  // and packing), and what all live engines of the process hold now: what
  // the daemon reports as TLS buffer memory (OpenSSL's own record buffers,
  // about 34 KiB a session, are not counted). Thread-safe.
  static constexpr size_t kBufferBytes = kInputSize + kOutputSize + kRecord;
  static uint64_t LiveBufferBytes();

  // The negotiated protocol and cipher suite, e.g. "TLSv1.3
  // TLS_AES_128_GCM_SHA256", for logs.
  const char* protocol() const;
  const char* cipher() const;

 private:
  explicit TlsEngine(ssl_st* ssl);
  // Runs SSL_write_ex(data, len) and maps its result.
  Want WriteRecords(const uint8_t* data, size_t len, size_t* n, ErrorCode* ec);
  // Maps the result of an SSL call: kNothing with `*ec` clear if it
  // succeeded, else what it wants or the error.
  Want Result(int ok, ErrorCode* ec);

  // The BIO's read and write (see tls_engine.cc).
  friend struct EngineBio;
  size_t TakeInput(uint8_t* dst, size_t n);
  size_t PutOutput(const uint8_t* src, size_t n);

  ssl_st* ssl_;
  std::unique_ptr<uint8_t[]> in_;     // kInputSize
  size_t in_pos_ = 0, in_end_ = 0;    // undecrypted bytes: [in_pos_, in_end_)
  std::unique_ptr<uint8_t[]> out_;    // kOutputSize
  size_t out_pos_ = 0, out_end_ = 0;  // unsent bytes: [out_pos_, out_end_)
  std::unique_ptr<uint8_t[]> plain_;  // kRecord: small pieces being packed
  size_t plain_fill_ = 0;
  // A write OpenSSL asked to retry (BIO full mid-record): it must see the
  // same length again. 0 if none.
  size_t retry_len_ = 0;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_TLS_TLS_ENGINE_H_
