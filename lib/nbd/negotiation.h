#ifndef NBDMGR_LIB_NBD_NEGOTIATION_H_
#define NBDMGR_LIB_NBD_NEGOTIATION_H_

#include <boost/asio/awaitable.hpp>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/export/export.h"
#include "lib/export/export_registry.h"
#include "lib/metrics/server_stats.h"
#include "lib/nbd/connection.h"
#include "lib/tls/tls_context.h"

namespace nbdmgr::nbd {

struct NegotiationOptions {
  // Longest option payload read into memory; longer ones are answered with
  // ERR_TOO_BIG and skipped without being stored.
  uint32_t max_option_length = 64 * 1024;
  // Options a client may send before choosing an export; past this the
  // connection is closed.
  int max_options = 256;
  // STARTTLS credentials; null: TLS is not offered (ERR_UNSUP).
  std::shared_ptr<TlsContext> tls;
  // Where limit refusals are counted and logged; may be null.
  ServerStats* stats = nullptr;
};

// What the client and server agreed on.
struct NegotiationResult {
  std::shared_ptr<Export> export_;
  bool structured_replies = false;
  bool no_zeroes = false;
  // The meta contexts SET_META_CONTEXT selected for this export, in the
  // order BLOCK_STATUS answers them: base:allocation (bitmap null) and
  // qemu:dirty-bitmap:NAME (the bitmap's bits as of the SET: one removed
  // since stops changing, one cleared reads clean).
  struct MetaContext {
    uint32_t id = 0;
    std::shared_ptr<const DirtyBitmap> bitmap;
  };
  std::vector<MetaContext> meta_contexts;
};

// The context id we hand out for base:allocation; dirty bitmaps get the
// ids after it, in the order a SET_META_CONTEXT selected them.
inline constexpr uint32_t kBaseAllocationId = 1;
// "qemu:dirty-bitmap:" + NAME names a bitmap of the export.
inline constexpr std::string_view kDirtyBitmapPrefix = "qemu:dirty-bitmap:";

// Runs the fixed-newstyle handshake and option haggling on `conn` until the
// client picks an export with GO or EXPORT_NAME. Every client-supplied
// length is checked before it sizes anything, and no client-chosen count
// multiplies memory or replies: one option payload (at most
// max_option_length) and one reply (at most ~8 KiB) are held at a time;
// INFO/GO answers each NBD_INFO type at most once however often it was
// asked for; META_CONTEXT sends one reply per matched context, not per query
// (base:allocation and the export's consistent dirty bitmaps, at most
// BitmapSet::kMaxBitmaps).
// With TLS: STARTTLS upgrades the connection and forgets what was
// negotiated in clear. Before TLS, exports with tls=require are hidden from
// LIST and refused with ERR_TLS_REQD (if every export requires TLS, every
// option but STARTTLS and ABORT is). A successful GO or EXPORT_NAME counts
// the client in the export (Export::TryAddClient); the caller removes it.
// Errors: Cancelled if the client sent ABORT or closed the connection;
// InvalidArgument for a protocol violation that ends the connection (bad
// magic, unknown client flags, unknown EXPORT_NAME); ResourceExhausted for
// too many options or a full export on EXPORT_NAME; PermissionDenied when a
// client refused TLS that was required (EXPORT_NAME in clear, or leaving
// after ERR_TLS_REQD); Unauthenticated if the TLS handshake failed;
// Unavailable for socket errors. On error the caller closes `conn`.
asio::awaitable<absl::StatusOr<NegotiationResult>> Negotiate(
    Connection& conn, const ExportRegistry& registry,
    const NegotiationOptions& limits);

}  // namespace nbdmgr::nbd

#endif  // NBDMGR_LIB_NBD_NEGOTIATION_H_
