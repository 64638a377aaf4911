#ifndef NBDMGR_LIB_NBD_CONNECTION_H_
#define NBDMGR_LIB_NBD_CONNECTION_H_

#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <tuple>

#include "lib/tls/tls_engine.h"

namespace nbdmgr::nbd {

namespace asio = boost::asio;
using Socket = asio::generic::stream_protocol::socket;
using ErrorCode = boost::system::error_code;

// One client's byte stream (TCP or Unix socket) with a read buffer, so a
// burst of small request headers costs one system call. Not thread-safe:
// used only from its session's executor. All operations report failure as
// an ErrorCode (never by throwing); end of stream is asio::error::eof.
// After StartTls() every read and write goes through TLS (TlsEngine; errors
// as asio::ssl::stream reports them: the client's close_notify is eof, the
// transport ending without one asio::ssl::error::stream_truncated). The
// server never sends close_notify.
//
// One reader and one writer may be in progress at once (a session's request
// loop and its reply writer). Memory: a 16 KiB read buffer, and with TLS
// about 240 KiB more of fixed buffers (see TlsEngine).
class Connection {
 public:
  explicit Connection(Socket socket);

  // Reads exactly dst.size() bytes.
  asio::awaitable<ErrorCode> ReadExact(std::span<uint8_t> dst);
  // Reads and throws away `n` bytes, without allocating for them.
  asio::awaitable<ErrorCode> Skip(uint64_t n);
  // Writes every byte of `buffers` (a gather write). With TLS a batch is
  // packed into full records and sent with one send per
  // TlsEngine::kOutputSize bytes of ciphertext.
  asio::awaitable<ErrorCode> WriteAll(
      std::span<const asio::const_buffer> buffers);
  asio::awaitable<ErrorCode> WriteAll(std::span<const uint8_t> bytes);

  // Runs the server side of a TLS handshake on the socket. Fails (without
  // a handshake) if the client already sent bytes after its STARTTLS
  // option: it must wait for the server's reply. `ctx` must outlive the
  // Connection. tls() is true from the call on, even if it fails.
  asio::awaitable<ErrorCode> StartTls(asio::ssl::context& ctx);
  bool tls() const { return tls_ != nullptr; }

  // Stops further reads: pending and later reads see end of stream; writes
  // still work (used to drain a session).
  void ShutdownRead();
  // Closes the socket; pending operations complete with operation_aborted.
  void Close();
  bool is_open() const { return socket_.is_open(); }

  // Progress, for the stall watchdog: counters that move whenever a read or
  // a write transfers bytes, and whether the session is now waiting for a
  // request's payload (set by the request loop) or for a write to finish.
  uint64_t read_progress() const { return read_progress_; }
  uint64_t write_progress() const { return write_progress_; }
  bool awaiting_payload() const { return awaiting_payload_; }
  void set_awaiting_payload(bool on) { awaiting_payload_ = on; }
  bool writing() const { return writing_ > 0; }

  // "tcp:1.2.3.4:5678" or "unix" for logs.
  const std::string& peer() const { return peer_; }
  bool is_tcp() const { return is_tcp_; }
  Socket& socket() { return socket_; }

 private:
  // Holds bursts of headers and small payloads; 8 KiB+ payloads bypass it.
  static constexpr size_t kReadBufferSize = 16 * 1024;

  // TLS: decrypts into `buf` until at least `min` bytes (and as many more as
  // already-received records hold) have arrived, receiving when needed.
  // The error (if any) and the bytes moved.
  asio::awaitable<std::tuple<ErrorCode, size_t>> TlsRead(
      asio::mutable_buffer buf, size_t min);
  // TLS: encrypts and sends all of `buffers`.
  asio::awaitable<ErrorCode> TlsWrite(
      std::span<const asio::const_buffer> buffers);
  // TLS: one receive into the engine's input buffer.
  asio::awaitable<ErrorCode> TlsReceive();
  // TLS: sends the engine's pending output, all of it, including what is
  // added while it sends. If another call is sending, waits for it first.
  // The first send error sticks: later calls return it.
  asio::awaitable<ErrorCode> TlsFlush();

  Socket socket_;
  std::unique_ptr<TlsEngine> tls_;  // set once TLS has started
  bool flushing_ = false;           // a TlsFlush is sending
  asio::steady_timer flush_done_;   // wakes a TlsFlush waiting for another
  ErrorCode flush_error_;
  std::unique_ptr<uint8_t[]> rbuf_;
  size_t rpos_ = 0;  // next unread byte in rbuf_
  size_t rend_ = 0;  // end of buffered bytes
  std::string peer_;
  bool is_tcp_ = false;
  uint64_t read_progress_ = 0;
  uint64_t write_progress_ = 0;
  bool awaiting_payload_ = false;
  int writing_ = 0;  // WriteAll calls in progress
};

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_CONNECTION_H_
