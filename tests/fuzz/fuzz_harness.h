#ifndef NBDMGR_TESTS_FUZZ_FUZZ_HARNESS_H_
#define NBDMGR_TESTS_FUZZ_FUZZ_HARNESS_H_

// Runs one nbd::Session over a socketpair: the fuzz input is what the client
// sends; the server's replies are read and thrown away. Everything runs on
// one io_context in the calling thread, so a run is deterministic and ends
// when the session does.

#include <sys/socket.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <vector>

#include "lib/buffer/buffer_policy.h"
#include "lib/export/export.h"
#include "lib/export/export_registry.h"
#include "lib/nbd/session.h"

namespace nbdmgr::fuzz {

namespace asio = boost::asio;

// Exports every run sees: a writable memory disk (the default), a read-only
// one, and one that requires TLS (which this server cannot offer).
class World {
 public:
  World() {
    auto add = [this](const char* name, bool ro, TlsMode tls) {
      ExportConfig c;
      c.name = name;
      c.backend = BackendKind::kMemory;
      c.size = 1 << 20;
      c.read_only = ro;
      c.tls = tls;
      c.block_sizes.maximum_payload = 1 << 20;
      auto e = Export::Create(c, buffers_);
      if (!e.ok() || !registry_.Add(*e).ok()) std::abort();
    };
    add("disk", false, TlsMode::kOff);
    add("ro", true, TlsMode::kOff);
    add("secret", false, TlsMode::kRequire);
    registry_.SetDefault("disk");
  }

  // Feeds `prefix` then `input` to a fresh session and runs it to the end.
  void Run(std::span<const uint8_t> prefix, std::span<const uint8_t> input) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      std::abort();
    }
    asio::io_context ioc;
    using Socket = nbd::Socket;
    const auto proto = asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM);
    nbd::SessionOptions opts;
    opts.transmission.blocking_pool = &pool_;
    opts.handshake_timeout = std::chrono::milliseconds(0);
    auto session = std::make_shared<nbd::Session>(Socket(ioc, proto, sv[0]),
                                                  registry_, opts);
    auto client = std::make_shared<Socket>(ioc, proto, sv[1]);
    std::vector<uint8_t> bytes(prefix.begin(), prefix.end());
    bytes.insert(bytes.end(), input.begin(), input.end());
    asio::co_spawn(ioc, session->Run(), asio::detached);
    // Client: send everything, then half-close (end of stream).
    asio::co_spawn(
        ioc,
        [client, bytes = std::move(bytes)]() -> asio::awaitable<void> {
          co_await asio::async_write(*client, asio::buffer(bytes),
                                     asio::as_tuple(asio::use_awaitable));
          boost::system::error_code ec;
          client->shutdown(asio::socket_base::shutdown_send, ec);
        },
        asio::detached);
    // Client: read and discard replies until the server closes.
    asio::co_spawn(
        ioc,
        [client]() -> asio::awaitable<void> {
          std::vector<uint8_t> sink(64 * 1024);
          for (;;) {
            auto [ec, n] = co_await client->async_read_some(
                asio::buffer(sink), asio::as_tuple(asio::use_awaitable));
            if (ec) co_return;
          }
        },
        asio::detached);
    ioc.run();
  }

 private:
  BufferSystem buffers_{1 << 20};
  ExportRegistry registry_;
  asio::thread_pool pool_{1};
};

}  // namespace nbdmgr::fuzz

#endif  // NBDMGR_TESTS_FUZZ_FUZZ_HARNESS_H_
