#ifndef NBDMGR_LIB_BACKEND_RBD_BACKEND_H_
#define NBDMGR_LIB_BACKEND_RBD_BACKEND_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "lib/backend/backend.h"

namespace nbdmgr {

struct RbdOptions {
  std::string pool;       // required
  std::string image;      // required
  std::string ns;         // RADOS namespace, "" = default
  std::string snapshot;   // "" = head; a snapshot is always read-only
  std::string ceph_conf;  // "" = librados' default search ($CEPH_CONF,
                          // /etc/ceph/ceph.conf, ~/.ceph/config, ./ceph.conf)
  std::string ceph_user;  // rados id ("admin" or "client.admin"), "" = admin
  bool read_only = false;
  // Creates the image (librbd's default features) with this size if it does
  // not exist; an existing image must have this size.
  std::optional<uint64_t> create_size;
  // Breaks another client's exclusive lock, which blocklists (fences) it.
  bool take_over = false;
};

class RadosConnection;  // rbd_backend.cc: one rados client, shared

// A Ceph RBD image through librbd. READ, WRITE and FLUSH are librbd aio
// calls (caps().async, no ring needed) completed on librbd's threads; TRIM,
// WRITE_ZEROES and block status block (caps().blocking) and run on the
// pool. FUA is write then flush; TRIM and WRITE_ZEROES zero the range
// (whole objects are removed, partial ones zeroed: trimmed ranges read as
// zeroes); WRITE_ZEROES with NO_HOLE writes allocated zeroes; block status
// comes from rbd_diff_iterate2.
//
// One writer per image: a writable export holds the image's exclusive lock
// from Open to destruction. A backend whose client was blocklisted (another
// client broke its lock with take_over) or that lost the lock is fenced():
// from then on every write, trim, zero and flush fails at once with
// Unavailable and nothing more is written.
//
// Exports with the same (ceph_conf, ceph_user) share one rados client
// (connection) while it is not fenced; a fenced client is never handed to
// a new export, which connects afresh. Ceph blocklists a client, not an
// image: a take over of one image fences every export sharing the client,
// of any image, read-only ones included. Thread-safe: librbd image handles
// take concurrent calls.
class RbdBackend final : public Backend {
 public:
  // Connects (or reuses the connection), opens the image (creating it with
  // `create_size` if missing) and, unless read-only, takes its exclusive
  // lock. Errors name the pool, image and user:
  //  - InvalidArgument: empty pool or image, a conf file that does not parse,
  //    an image of size 0, an existing image whose size is not create_size;
  //  - NotFound: the conf file (or, with ceph_conf "", any default one), the
  //    pool, the namespace's image, the image (without create_size, or
  //    read-only) or the snapshot does not exist;
  //  - PermissionDenied: authentication refused (unknown user, wrong or
  //    missing key), or the user's caps do not allow the open;
  //  - Unavailable: no monitor answered within the connect timeout (15 s
  //    unless the conf sets client_mount_timeout);
  //  - FailedPrecondition: writable, and another client holds the lock (the
  //    message names it: its address) and take_over is false, or it is this
  //    process's own client (a take over would fence this process); or the
  //    image lacks the exclusive-lock feature;
  //  - Unavailable also: the client is blocklisted even on a new connection;
  //  - else the errno-derived status.
  // Refused at once without take_over: a holder that is alive, or died less
  // than ~30 s ago (its watch has not timed out). A holder with no watch
  // any more (dead for longer, or blocklisted) cannot write: its lock is
  // broken (and it blocklisted) without take_over. take_over breaks the
  // lock of any holder at once (blocklisting it), unless other clients take
  // it again 3 times running.
  // Monitor operations time out after 30 s (rados_mon_op_timeout, unless
  // the conf sets it); OSD operations never do: I/O waits out an OSD
  // failover or a full cluster, as qemu and krbd do.
  static absl::StatusOr<std::unique_ptr<RbdBackend>> Open(const RbdOptions& o);
  // Releases the lock (if held), closes the image (which flushes) and drops
  // the connection (shut down when its last export goes). No call may be in
  // flight.
  ~RbdBackend() override;

  // The address of the client holding the image's exclusive lock (e.g.
  // "127.0.0.1:0/423353511"), "" when no client holds it or this one does.
  // Asks the cluster (one round trip, up to rados_osd_op_timeout): call it
  // off the network threads. "" also when the query fails.
  std::string lock_owner() const;
  // This export's rados client address, as lock_owner() shows it to other
  // clients.
  std::string client_address() const;
  // A call of this export, or of another one sharing its client, came back
  // blocklisted (-ESHUTDOWN), or a write came back -EROFS (the lock was
  // lost): nothing more is written (reads fail too when blocklisted).
  // Local state, never a cluster round trip: a take-over shows here from
  // the first call after it.
  bool fenced() const;
  // read_only or a snapshot: every write, trim and zero fails with
  // PermissionDenied.
  bool read_only() const { return read_only_; }
  const RbdOptions& options() const { return options_; }

  uint64_t size() const override { return size_; }
  BackendCaps caps() const override;
  absl::Status Read(uint64_t offset, std::span<uint8_t> buf) override;
  absl::Status Write(uint64_t offset, std::span<const uint8_t> data,
                     bool fua) override;
  absl::Status Flush() override;
  void ReadAsync(uint64_t offset, std::span<uint8_t> buf, IoRing* ring,
                 IoCompletion& done) override;
  void WriteAsync(uint64_t offset, std::span<const uint8_t> data, bool fua,
                  IoRing* ring, IoCompletion& done) override;
  void FlushAsync(IoRing* ring, IoCompletion& done) override;
  absl::Status Trim(uint64_t offset, uint64_t length, bool fua) override;
  // may_trim: rbd_write_zeroes (whole objects removed); !may_trim: with
  // RBD_WRITE_ZEROES_FLAG_THICK_PROVISION (zeroes written, allocated).
  // fast: Unimplemented.
  absl::Status Zero(uint64_t offset, uint64_t length,
                    ZeroOptions options) override;
  absl::Status Extents(uint64_t offset, uint64_t length,
                       absl::FunctionRef<bool(Extent)> visit) override;

 private:
  friend class RbdOp;
  RbdBackend(const RbdOptions& options, std::string name,
             std::shared_ptr<RadosConnection> conn, void* ioctx, void* image,
             uint64_t size, bool read_only, std::string header_oid);

  // The status of librbd's result `r` (< 0) for `what` at `offset`; marks
  // the backend (and, blocklisted, its connection) fenced.
  absl::Status Failed(int r, const char* what, uint64_t offset);
  // Why writes are refused now (read-only, fenced), or OK.
  absl::Status CheckWritable() const;
  absl::Status FencedError() const;
  // Runs a synchronous librbd call on [offset, offset+length) in pieces
  // librbd's int-sized results can report.
  template <typename Fn>
  absl::Status Chunked(const char* what, uint64_t offset, uint64_t length,
                       Fn fn);

  const RbdOptions options_;
  const std::string name_;  // "pool/[ns/]image[@snapshot]"
  const std::shared_ptr<RadosConnection> conn_;
  void* const ioctx_;  // rados_ioctx_t
  void* const image_;  // rbd_image_t
  const uint64_t size_;
  const bool read_only_;
  const std::string header_oid_;  // "rbd_header.<id>": holds the lock
  std::atomic<bool> fenced_{false};
  std::atomic<bool> lost_lock_{false};  // fenced by -EROFS, not blocklisted
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BACKEND_RBD_BACKEND_H_
