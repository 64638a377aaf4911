#include "lib/backend/rbd_backend.h"

#include <rados/librados.h>
#include <rbd/librbd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "lib/util/errors.h"
#include "lib/util/mutex.h"

// rbd_write_zeroes' RBD_WRITE_ZEROES_FLAG_THICK_PROVISION and
// rbd_diff_iterate2 as used here: Ceph 16 (Pacific) or later.
static_assert(LIBRBD_VERSION_CODE >= LIBRBD_VERSION(1, 16, 0),
              "the rbd backend needs librbd 1.16 (Ceph 16) or later");

namespace nbdmgr {

namespace {

// What a client waits for, unless its conf sets otherwise: the monitors at
// connect time, then each monitor and OSD operation. librados waits 300 s
// to connect and forever for operations by default: a wrong conf or a dead
// cluster would hang an export's creation, and a lost OSD its I/O.
constexpr int kConnectTimeoutSeconds = 15;
constexpr int kOpTimeoutSeconds = 30;

// librbd's synchronous calls report bytes done as an int: ranges are split.
constexpr uint64_t kMaxChunk = uint64_t{1} << 30;
// Block status asks the cluster for at most this much at a time (64
// objects of the default 4 MiB).
constexpr uint64_t kExtentsWindow = uint64_t{256} << 20;

// "admin" from "admin", "client.admin" or "".
std::string RadosId(const std::string& user) {
  if (user.empty()) return "admin";
  if (user.rfind("client.", 0) == 0) return user.substr(7);
  return user;
}

std::string ConfName(const std::string& conf) {
  return conf.empty() ? std::string("the default Ceph config") : conf;
}

// Sets `option` to `seconds` unless the conf file set it (it still has
// librados' default, `dflt`; a conf that sets exactly the default cannot be
// told apart and gets ours).
void DefaultTimeout(rados_t cluster, const char* option, double dflt,
                    int seconds) {
  char buf[64];
  if (rados_conf_get(cluster, option, buf, sizeof(buf)) == 0 &&
      std::strtod(buf, nullptr) != dflt) {
    return;
  }
  rados_conf_set(cluster, option, std::to_string(seconds).c_str());
}

// "v1:127.0.0.1:0/123" as "127.0.0.1:0/123": without the type, as
// librados and rbd_lock_get_owners show addresses.
std::string PlainAddress(std::string addr) {
  for (const char* type : {"v1:", "v2:", "any:"}) {
    if (addr.rfind(type, 0) == 0) addr.erase(0, std::strlen(type));
  }
  return addr;
}

// Fills `out` with the addresses of the clients watching `image` (every
// client with it open writable, until its watch times out ~30 s after it
// died, or it is blocklisted); 0 or -errno.
int Watchers(rbd_image_t image, std::vector<std::string>* out) {
  out->clear();
  std::vector<rbd_image_watcher_t> watchers(8);
  for (;;) {
    size_t n = watchers.size();
    int r = rbd_watchers_list(image, watchers.data(), &n);
    if (r == -ERANGE && n > watchers.size()) {
      watchers.resize(n);
      continue;
    }
    if (r < 0) return r;
    for (size_t i = 0; i < n; ++i) {
      out->push_back(PlainAddress(watchers[i].addr));
    }
    rbd_watchers_list_cleanup(watchers.data(), n);
    return 0;
  }
}

// Fills `out` with the addresses of the clients holding `image`'s
// exclusive lock; 0 or -errno.
int LockOwners(rbd_image_t image, std::vector<std::string>* out) {
  out->clear();
  std::vector<char*> owners(4);
  for (;;) {
    rbd_lock_mode_t mode;
    size_t n = owners.size();
    int r = rbd_lock_get_owners(image, &mode, owners.data(), &n);
    if (r == -ERANGE && n > owners.size()) {
      owners.resize(n);
      continue;
    }
    if (r == -ENOENT) return 0;  // not locked
    if (r < 0) return r;
    out->assign(owners.begin(), owners.begin() + n);
    rbd_lock_get_owners_cleanup(owners.data(), n);
    return 0;
  }
}

// The addresses of the clients holding the exclusive lock that librbd
// keeps on an image's header object (cls_lock "rbd_lock"), which any
// client that may read the image can list.
absl::StatusOr<std::vector<std::string>> HeaderLockers(
    rados_ioctx_t io, const std::string& header_oid) {
  size_t tag_len = 64, clients_len = 256, cookies_len = 256, addrs_len = 256;
  for (int tries = 0; tries < 4; ++tries) {
    std::string tag(tag_len, '\0'), clients(clients_len, '\0'),
        cookies(cookies_len, '\0'), addrs(addrs_len, '\0');
    int exclusive = 0;
    ssize_t n = rados_list_lockers(io, header_oid.c_str(), "rbd_lock",
                                   &exclusive, tag.data(), &tag_len,
                                   clients.data(), &clients_len, cookies.data(),
                                   &cookies_len, addrs.data(), &addrs_len);
    if (n == -ERANGE) continue;  // the lengths were updated
    if (n == -ENOENT) return std::vector<std::string>{};
    if (n < 0) return ErrnoStatus(static_cast<int>(-n), "rados_list_lockers");
    std::vector<std::string> out;
    const char* p = addrs.data();
    for (ssize_t i = 0; i < n && p < addrs.data() + addrs.size(); ++i) {
      out.push_back(PlainAddress(p));
      p += std::strlen(p) + 1;
    }
    return out;
  }
  return absl::InternalError("rados_list_lockers: buffers keep growing");
}

bool Blocklisted(int r) {
  // EBLOCKLISTED is ESHUTDOWN in Ceph (include/rados.h of the OSD
  // protocol); it is not in the client headers.
  return r == -ESHUTDOWN;
}

}  // namespace

// One rados client (a monitor session and OSD connections) for one
// (ceph_conf, ceph_user), shared by every export that names them, and shut
// down when the last one goes. The process-wide registry hands out the live
// connection for a key unless it is fenced: a blocklisted client stays
// blocklisted (for an hour by default), so exports opened later connect
// anew. Thread-safe.
class RadosConnection {
 public:
  // The registry's unfenced connection for (conf, id), or a new one (which
  // the registry then hands out). Connecting happens outside the registry's
  // lock: other exports open meanwhile.
  static absl::StatusOr<std::shared_ptr<RadosConnection>> Get(
      const std::string& conf, const std::string& id);

  ~RadosConnection() { rados_shutdown(cluster_); }
  RadosConnection(const RadosConnection&) = delete;
  RadosConnection& operator=(const RadosConnection&) = delete;

  rados_t cluster() const { return cluster_; }
  const std::string& id() const { return id_; }
  const std::string& conf() const { return conf_; }
  // The client's address: what lock owners and blocklists show.
  std::string address() const {
    char* addrs = nullptr;
    if (rados_getaddrs(cluster_, &addrs) != 0 || addrs == nullptr) return "";
    std::string s(addrs);
    std::free(addrs);
    return s;
  }
  // The cluster blocklisted this client: never hand it out again.
  void MarkFenced() { fenced_.store(true, std::memory_order_relaxed); }
  bool fenced() const { return fenced_.load(std::memory_order_relaxed); }

 private:
  struct Registry {
    Mutex mu;
    std::map<std::pair<std::string, std::string>,
             std::weak_ptr<RadosConnection>>
        conns ABSL_GUARDED_BY(mu);
  };
  static Registry& registry() {
    static Registry* r = new Registry;  // never destroyed: no exit races
    return *r;
  }

  RadosConnection(rados_t cluster, std::string conf, std::string id)
      : cluster_(cluster), conf_(std::move(conf)), id_(std::move(id)) {}
  static absl::StatusOr<rados_t> Connect(const std::string& conf,
                                         const std::string& id);

  const rados_t cluster_;
  const std::string conf_;
  const std::string id_;
  std::atomic<bool> fenced_{false};
};

absl::StatusOr<std::shared_ptr<RadosConnection>> RadosConnection::Get(
    const std::string& conf, const std::string& id) {
  Registry& reg = registry();
  const auto key = std::make_pair(conf, id);
  {
    MutexLock lock(&reg.mu);
    auto it = reg.conns.find(key);
    if (it != reg.conns.end()) {
      if (auto c = it->second.lock(); c != nullptr && !c->fenced()) return c;
    }
  }
  absl::StatusOr<rados_t> cluster = Connect(conf, id);
  if (!cluster.ok()) return cluster.status();
  std::shared_ptr<RadosConnection> fresh(
      new RadosConnection(*cluster, conf, id));
  std::shared_ptr<RadosConnection> theirs;  // released after the lock
  MutexLock lock(&reg.mu);
  std::weak_ptr<RadosConnection>& slot = reg.conns[key];
  // Another export connected meanwhile: share its client, drop ours.
  if (theirs = slot.lock(); theirs != nullptr && !theirs->fenced()) {
    std::swap(theirs, fresh);
    lock.Release();
    return fresh;
  }
  slot = fresh;
  return fresh;
}

absl::StatusOr<rados_t> RadosConnection::Connect(const std::string& conf,
                                                 const std::string& id) {
  const std::string who = absl::StrCat("client.", id);
  rados_t cluster;
  int r = rados_create2(&cluster, "ceph", who.c_str(), 0);
  if (r < 0) return ErrnoStatus(-r, absl::StrCat("rados_create2 ", who));
  auto fail = [cluster](absl::Status st) {
    rados_shutdown(cluster);
    return st;
  };
  // The compiled-in plugin directory, kept whatever the conf says.
  std::string plugin_dir;
  {
    char buf[4096];
    if (rados_conf_get(cluster, "plugin_dir", buf, sizeof(buf)) == 0) {
      plugin_dir = buf;
    }
  }
  r = rados_conf_read_file(cluster, conf.empty() ? nullptr : conf.c_str());
  if (r == -ENOENT) {
    return fail(absl::NotFoundError(
        conf.empty() ? std::string("no Ceph config found ($CEPH_CONF, "
                                   "/etc/ceph/ceph.conf, ~/.ceph/config, "
                                   "./ceph.conf): give ceph-conf")
                     : absl::StrCat("Ceph config ", conf, ": no such file")));
  }
  if (r == -EACCES || r == -EPERM) {
    return fail(absl::PermissionDeniedError(
        absl::StrCat("Ceph config ", ConfName(conf), ": ", std::strerror(-r))));
  }
  if (r < 0) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("Ceph config ", ConfName(conf),
                     ": cannot be read or parsed: ", std::strerror(-r))));
  }
  DefaultTimeout(cluster, "client_mount_timeout", 300, kConnectTimeoutSeconds);
  DefaultTimeout(cluster, "rados_mon_op_timeout", 0, kOpTimeoutSeconds);
  // No OSD operation timeout (librados' default): a write that waits out an
  // OSD failover or a full cluster must wait, not fail with EIO (guests'
  // file systems treat a failed write as fatal), as qemu and krbd do.
  //
  // What no conf may change: the daemon's own files (admin socket, log),
  // where plugins are loaded from, and that breaking a lock blocklists its
  // holder (without that a take-over does not fence: split brain).
  rados_conf_set(cluster, "admin_socket", "");
  rados_conf_set(cluster, "log_file", "");
  if (!plugin_dir.empty()) {
    rados_conf_set(cluster, "plugin_dir", plugin_dir.c_str());
  }
  rados_conf_set(cluster, "rbd_blocklist_on_break_lock", "true");
  // A WRITE's payload stays untouched until its completion, and librbd
  // delays the completion until it lets go of the memory: no copy.
  rados_conf_set(cluster, "rbd_disable_zero_copy_writes", "false");
  r = rados_connect(cluster);
  if (r == 0) return cluster;
  const std::string where =
      absl::StrCat("the Ceph cluster of ", ConfName(conf), " as ", who);
  switch (-r) {
    case ETIMEDOUT: {
      char t[32] = "?";
      rados_conf_get(cluster, "client_mount_timeout", t, sizeof(t));
      return fail(absl::UnavailableError(
          absl::StrCat("connecting to ", where, ": no monitor answered within ",
                       t, " s (mon host unreachable or wrong?)")));
    }
    case EACCES:
    case EPERM:
      return fail(absl::PermissionDeniedError(absl::StrCat(
          "connecting to ", where,
          ": authentication refused (unknown user, or wrong key: ", who,
          "'s keyring is the conf's \"keyring\" option)")));
    case ENOENT:
      return fail(absl::PermissionDeniedError(
          absl::StrCat("connecting to ", where, ": no keyring with a key for ",
                       who, " found (the conf's \"keyring\" option)")));
    case EINVAL:
      return fail(absl::InvalidArgumentError(absl::StrCat(
          "connecting to ", where,
          ": invalid configuration (no \"mon host\"?): ", std::strerror(-r))));
    default:
      return fail(absl::UnavailableError(absl::StrCat(
          "connecting to ", where, ": ", std::strerror(-r), " (", r, ")")));
  }
}

namespace {

// An open image and its pool context, closed on destruction unless
// released: the pieces of an Open that may still fail.
struct OpenedImage {
  rados_ioctx_t io = nullptr;
  rbd_image_t image = nullptr;
  OpenedImage() = default;
  OpenedImage(const OpenedImage&) = delete;
  OpenedImage& operator=(const OpenedImage&) = delete;
  ~OpenedImage() {
    if (image != nullptr) rbd_close(image);
    if (io != nullptr) rados_ioctx_destroy(io);
  }
};

// "pool/[ns/]image[@snapshot]", as the rbd command line names images.
std::string ImageSpec(const RbdOptions& o) {
  return absl::StrCat(o.pool, "/", o.ns.empty() ? "" : o.ns + "/", o.image,
                      o.snapshot.empty() ? "" : "@" + o.snapshot);
}

}  // namespace

absl::StatusOr<std::unique_ptr<RbdBackend>> RbdBackend::Open(
    const RbdOptions& o) {
  if (o.pool.empty()) {
    return absl::InvalidArgumentError("rbd export needs a pool");
  }
  if (o.image.empty()) {
    return absl::InvalidArgumentError("rbd export needs an image");
  }
  const std::string id = RadosId(o.ceph_user);
  const std::string who = absl::StrCat("client.", id);
  const std::string name = ImageSpec(o);
  const bool read_only = o.read_only || !o.snapshot.empty();
  const char* snap = o.snapshot.empty() ? nullptr : o.snapshot.c_str();

  const std::string where =
      absl::StrCat(" (", ConfName(o.ceph_conf), ", as ", who, ")");
  // A client that was blocklisted while no export used it (so nobody
  // noticed) fails with -ESHUTDOWN: it is marked fenced, and the open tried
  // once more on a fresh connection.
  for (int attempt = 0; attempt < 2; ++attempt) {
    absl::StatusOr<std::shared_ptr<RadosConnection>> conn =
        RadosConnection::Get(o.ceph_conf, id);
    if (!conn.ok()) return conn.status();
    auto blocklisted = [&](int r) {
      if (!Blocklisted(r)) return false;
      (*conn)->MarkFenced();
      return true;
    };
    OpenedImage img;
    rados_ioctx_t io;
    int r = rados_ioctx_create((*conn)->cluster(), o.pool.c_str(), &io);
    if (r == 0) img.io = io;
    if (blocklisted(r)) continue;
    if (r == -ENOENT) {
      return absl::NotFoundError(
          absl::StrCat("pool ", o.pool, " does not exist", where));
    }
    if (r == -EACCES || r == -EPERM) {
      return absl::PermissionDeniedError(absl::StrCat(
          who, " may not use pool ", o.pool, where, ": ", std::strerror(-r)));
    }
    if (r < 0)
      return ErrnoStatus(-r, absl::StrCat("open pool ", o.pool, where));
    rados_ioctx_set_namespace(img.io, o.ns.c_str());

    auto open = [&] {
      rbd_image_t image;
      int r = read_only
                  ? rbd_open_read_only(img.io, o.image.c_str(), &image, snap)
                  : rbd_open(img.io, o.image.c_str(), &image, nullptr);
      if (r == 0) img.image = image;
      return r;
    };
    r = open();
    if (r == -ENOENT && o.create_size.has_value() && !read_only) {
      rbd_image_options_t opts;
      rbd_image_options_create(&opts);  // empty: the conf's default features
      int cr = rbd_create4(img.io, o.image.c_str(), *o.create_size, opts);
      rbd_image_options_destroy(opts);
      if (blocklisted(cr)) continue;
      if (cr < 0 && cr != -EEXIST) {  // EEXIST: created meanwhile
        if (cr == -EACCES || cr == -EPERM) {
          return absl::PermissionDeniedError(
              absl::StrCat(who, " may not create image ", name, where, ": ",
                           std::strerror(-cr)));
        }
        if (cr == -ENOENT && !o.ns.empty()) {
          return absl::NotFoundError(
              absl::StrCat("cannot create image ", name, ": namespace ", o.ns,
                           " of pool ", o.pool, " does not exist", where));
        }
        if (cr == -EINVAL) {
          return absl::InvalidArgumentError(
              absl::StrCat("cannot create image ", name, " of ", *o.create_size,
                           " bytes", where, ": ", std::strerror(-cr)));
        }
        return ErrnoStatus(-cr, absl::StrCat("create image ", name, where));
      }
      r = open();
    }
    if (blocklisted(r)) continue;
    if (r == -ENOENT) {
      rbd_image_t head;
      if (snap != nullptr &&
          rbd_open_read_only(img.io, o.image.c_str(), &head, nullptr) == 0) {
        rbd_close(head);
        return absl::NotFoundError(absl::StrCat(
            "snapshot ", o.snapshot, " of image ", o.pool, "/",
            o.ns.empty() ? "" : o.ns + "/", o.image, " does not exist", where));
      }
      return absl::NotFoundError(absl::StrCat(
          "image ", name, " does not exist", where,
          read_only ? (o.create_size.has_value()
                           ? " (and the export is read-only: not created)"
                           : "")
                    : " (give a size to create it)"));
    }
    if (r == -EACCES || r == -EPERM) {
      return absl::PermissionDeniedError(absl::StrCat(
          who, " may not open image ", name, read_only ? "" : " for writing",
          where, ": ", std::strerror(-r), " (its caps)"));
    }
    if (r < 0) {
      return ErrnoStatus(-r, absl::StrCat("open image ", name, where));
    }

    uint64_t size = 0;
    r = rbd_get_size(img.image, &size);
    if (blocklisted(r)) continue;
    if (r < 0) return ErrnoStatus(-r, absl::StrCat("size of image ", name));
    if (o.create_size.has_value() && *o.create_size != size) {
      return absl::InvalidArgumentError(
          absl::StrCat("image ", name, " is ", size, " bytes but a size of ",
                       *o.create_size, " was given"));
    }
    if (size == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("image ", name, " is empty (size 0)"));
    }

    if (!read_only) {
      uint64_t features = 0;
      r = rbd_get_features(img.image, &features);
      if (blocklisted(r)) continue;
      if (r < 0) {
        return ErrnoStatus(-r, absl::StrCat("features of image ", name));
      }
      if ((features & RBD_FEATURE_EXCLUSIVE_LOCK) == 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "image ", name,
            " has no exclusive-lock feature, so one writer cannot be "
            "guaranteed: enable it (rbd feature enable ",
            name, " exclusive-lock) or export it read-only"));
      }
      // The owners are looked up first. A live holder refuses to hand over
      // a lock taken explicitly (rbd_lock_acquire: -EROFS), and for one
      // that died less than ~30 s ago (its watch has not timed out)
      // rbd_lock_acquire would wait that long and then break its lock:
      // both are refused at once, or broken with take_over, which
      // blocklists (fences) the holder, dead or not. A holder without a
      // watch (dead for longer, or blocklisted) cannot write any more:
      // rbd_lock_acquire breaks its lock itself, at once.
      bool retry = false;
      for (int round = 0;; ++round) {
        if (round > 8) {  // the lock keeps changing hands: give up
          r = -EBUSY;
          break;
        }
        std::vector<std::string> owners;
        r = LockOwners(img.image, &owners);
        if (r < 0) break;
        if (!owners.empty()) {
          const std::string holders = absl::StrJoin(owners, ", ");
          const std::string mine = (*conn)->address();
          if (std::find(owners.begin(), owners.end(), mine) != owners.end()) {
            return absl::FailedPreconditionError(
                absl::StrCat("image ", name,
                             " is locked by another export of this process "
                             "(client ",
                             holders, "): remove that export first"));
          }
          bool watching = true;  // if unsure, alive
          std::vector<std::string> watchers;
          if (!o.take_over && Watchers(img.image, &watchers) == 0) {
            watching = std::any_of(
                owners.begin(), owners.end(), [&](const std::string& a) {
                  return std::find(watchers.begin(), watchers.end(), a) !=
                         watchers.end();
                });
          }
          if ((!o.take_over && watching) || round == 3) {
            return absl::FailedPreconditionError(absl::StrCat(
                "image ", name, " is locked by another client (", holders, ")",
                o.take_over ? " again after breaking its lock 3 times"
                            : "; take over to break its lock, which "
                              "blocklists (fences) that client",
                where));
          }
          for (const std::string& owner : owners) {
            if (!o.take_over) break;  // stale: rbd_lock_acquire breaks it
            int br = rbd_lock_break(img.image, RBD_LOCK_MODE_EXCLUSIVE,
                                    owner.c_str());
            if (br == -ENOENT) continue;  // released meanwhile
            if (blocklisted(br)) {
              retry = true;  // this client: try again on a new one
              break;
            }
            if (br == -EACCES || br == -EPERM) {
              return absl::PermissionDeniedError(absl::StrCat(
                  who, " may not break the lock of ", owner, " on image ", name,
                  " (blocklisting needs caps such as 'profile rbd')", where));
            }
            if (br < 0) {
              return ErrnoStatus(-br, absl::StrCat("break the lock of ", owner,
                                                   " on image ", name, where));
            }
          }
          if (retry) break;
        }
        r = rbd_lock_acquire(img.image, RBD_LOCK_MODE_EXCLUSIVE);
        // Taken by another client meanwhile: look again.
        if (r != -EROFS && r != -EBUSY) break;
      }
      if (retry) continue;
      if (blocklisted(r)) continue;
      if (r < 0) {
        return ErrnoStatus(-r, absl::StrCat("lock image ", name, where));
      }
    }

    char image_id[128] = "";
    r = rbd_get_id(img.image, image_id, sizeof(image_id));
    if (blocklisted(r)) continue;
    // Format 1 images have no id (-EINVAL) and no exclusive lock either.
    std::string header_oid =
        r == 0 ? absl::StrCat("rbd_header.", image_id) : std::string();

    auto backend = std::unique_ptr<RbdBackend>(
        new RbdBackend(o, name, *std::move(conn), img.io, img.image, size,
                       read_only, std::move(header_oid)));
    img.io = nullptr;
    img.image = nullptr;
    return backend;
  }
  return absl::UnavailableError(absl::StrCat(
      who, " is blocklisted by the cluster, and again on a new connection",
      where));
}

RbdBackend::RbdBackend(const RbdOptions& options, std::string name,
                       std::shared_ptr<RadosConnection> conn, void* ioctx,
                       void* image, uint64_t size, bool read_only,
                       std::string header_oid)
    : options_(options),
      name_(std::move(name)),
      conn_(std::move(conn)),
      ioctx_(ioctx),
      image_(image),
      size_(size),
      read_only_(read_only),
      header_oid_(std::move(header_oid)) {}

RbdBackend::~RbdBackend() {
  // A fenced client's calls fail at once (blocklisted) or the lock is
  // someone else's: nothing to flush or release.
  if (!read_only_ && !fenced()) {
    rbd_flush(image_);
    rbd_lock_release(image_);
  }
  rbd_close(image_);
  rados_ioctx_destroy(ioctx_);
}

std::string RbdBackend::lock_owner() const {
  // Read from the lock itself (a cls_lock on the image's header object):
  // librbd's rbd_lock_get_owners needs a writable image handle.
  absl::StatusOr<std::vector<std::string>> owners =
      HeaderLockers(static_cast<rados_ioctx_t>(ioctx_), header_oid_);
  if (!owners.ok() || owners->empty()) return "";
  if (!read_only_ && !fenced() &&
      std::find(owners->begin(), owners->end(), conn_->address()) !=
          owners->end()) {
    return "";  // this export's own lock
  }
  return absl::StrJoin(*owners, ", ");
}

std::string RbdBackend::client_address() const { return conn_->address(); }

bool RbdBackend::fenced() const {
  // Local state only: called per write on the io threads, and by the API.
  // (rbd_is_exclusive_lock_owner is no substitute: it asks the OSD holding
  // the header, and waits as long as that OSD does not answer.) The lock
  // is taken in exclusive mode, so librbd never hands it over on request:
  // it is lost only when another client breaks it, which blocklists this
  // client, and the next call that reaches the cluster says so.
  return fenced_.load(std::memory_order_relaxed) || conn_->fenced();
}

BackendCaps RbdBackend::caps() const {
  BackendCaps c;
  c.can_trim = true;
  c.can_zero = true;
  c.can_fast_zero = false;  // zeroing costs OSD operations either way
  c.can_flush = true;
  c.can_multi_conn = true;  // one image handle serves every connection
  c.can_extents = true;
  // CACHE is advertised and answered as a no-op (Backend::Cache), as the
  // NBD spec allows: librbd has no prefetch call, and reading the range to
  // warm a cache would cost OSD reads for nothing under the default
  // writearound cache policy, which does not keep what it reads.
  c.can_cache = true;
  c.blocking = true;  // TRIM, WRITE_ZEROES and block status wait
  c.async = true;     // READ, WRITE and FLUSH are librbd aio
  c.async_needs_ring = false;
  // READ data never depends on block status: a hole librbd reads as
  // zeroes costs no OSD read anyway, and a diff that misreports (as
  // rbd_diff_iterate2 has in some Ceph releases) must not turn data into
  // zeroes.
  c.sparse_read_min = UINT64_MAX;
  return c;
}

absl::Status RbdBackend::FencedError() const {
  if (conn_->fenced() || !lost_lock_.load(std::memory_order_relaxed)) {
    return absl::UnavailableError(absl::StrCat(
        "image ", name_, ": this client (client.", conn_->id(), " at ",
        conn_->address(),
        ") is blocklisted (fenced): another client broke its lock on this "
        "or another image (took it over); nothing more is written"));
  }
  return absl::UnavailableError(absl::StrCat(
      "image ", name_,
      ": lost the exclusive lock to another client (fenced): nothing more is "
      "written"));
}

absl::Status RbdBackend::CheckWritable() const {
  if (read_only_) {
    return absl::PermissionDeniedError(
        absl::StrCat("image ", name_, " is exported read-only"));
  }
  if (fenced()) return FencedError();
  return absl::OkStatus();
}

absl::Status RbdBackend::Failed(int r, const char* what, uint64_t offset) {
  if (Blocklisted(r)) {
    fenced_.store(true, std::memory_order_relaxed);
    conn_->MarkFenced();
    return FencedError();
  }
  if (r == -EROFS && !read_only_) {
    // A writable image handle refuses writes only when another client
    // owns the lock: the image is someone else's now.
    lost_lock_.store(true, std::memory_order_relaxed);
    fenced_.store(true, std::memory_order_relaxed);
    return FencedError();
  }
  return ErrnoStatus(
      -r, absl::StrCat("rbd ", what, " ", name_, " at offset ", offset));
}

// One READ, WRITE or FLUSH through librbd's aio, kept in its completion's
// scratch space. librbd calls OnComplete on one of its threads; a FUA
// write then starts a flush from there.
class RbdOp {
 public:
  enum class Kind : uint8_t { kRead, kWrite, kFlush };

  RbdOp(RbdBackend& backend, IoCompletion& done, Kind kind, uint64_t offset,
        uint8_t* buf, size_t length, bool fua)
      : backend_(backend),
        done_(done),
        offset_(offset),
        buf_(buf),
        length_(length),
        kind_(kind),
        fua_(fua) {}

  void Start() {
    rbd_completion_t c;
    int r = rbd_aio_create_completion(this, &RbdOp::OnComplete, &c);
    if (r < 0) return Finish(backend_.Failed(r, What(), offset_));
    rbd_image_t image = backend_.image_;
    switch (kind_) {
      case Kind::kRead:
        r = rbd_aio_read(image, offset_, length_, reinterpret_cast<char*>(buf_),
                         c);
        break;
      case Kind::kWrite:
        r = rbd_aio_write(image, offset_, length_,
                          reinterpret_cast<const char*>(buf_), c);
        break;
      case Kind::kFlush:
        r = rbd_aio_flush(image, c);
        break;
    }
    if (r < 0) {
      rbd_aio_release(c);
      Finish(backend_.Failed(r, What(), offset_));
    }
  }

 private:
  static void OnComplete(rbd_completion_t c, void* arg) {
    auto* op = static_cast<RbdOp*>(arg);
    const ssize_t r = rbd_aio_get_return_value(c);
    rbd_aio_release(c);
    op->Done(r);
  }

  void Done(ssize_t r) {
    if (r < 0) {
      return Finish(backend_.Failed(static_cast<int>(r), What(), offset_));
    }
    // Reads return the bytes read (writes 0): short only past the end of
    // the image, which callers never ask for, but read as zeroes.
    if (kind_ == Kind::kRead && static_cast<size_t>(r) < length_) {
      std::memset(buf_ + r, 0, length_ - static_cast<size_t>(r));
    }
    if (kind_ == Kind::kWrite && fua_) {
      kind_ = Kind::kFlush;  // FUA: durable before it completes
      return Start();
    }
    Finish(absl::OkStatus());
  }

  const char* What() const {
    switch (kind_) {
      case Kind::kRead:
        return "read";
      case Kind::kWrite:
        return "write";
      case Kind::kFlush:
        return fua_ ? "flush (FUA write)" : "flush";
    }
    return "?";
  }

  // The last touch of this object: `done` may reuse its storage.
  void Finish(absl::Status st) { done_.Complete(std::move(st)); }

  RbdBackend& backend_;
  IoCompletion& done_;
  uint64_t offset_;
  uint8_t* buf_;
  size_t length_;
  Kind kind_;
  bool fua_;
};
static_assert(sizeof(RbdOp) <= IoCompletion::kScratchSize);
static_assert(alignof(RbdOp) <= alignof(std::max_align_t));
static_assert(std::is_trivially_destructible_v<RbdOp>);

void RbdBackend::ReadAsync(uint64_t offset, std::span<uint8_t> buf,
                           IoRing* ring, IoCompletion& done) {
  (void)ring;
  (new (done.scratch()) RbdOp(*this, done, RbdOp::Kind::kRead, offset,
                              buf.data(), buf.size(), false))
      ->Start();
}

void RbdBackend::WriteAsync(uint64_t offset, std::span<const uint8_t> data,
                            bool fua, IoRing* ring, IoCompletion& done) {
  (void)ring;
  if (absl::Status st = CheckWritable(); !st.ok()) {
    return done.Complete(std::move(st));
  }
  (new (done.scratch())
       RbdOp(*this, done, RbdOp::Kind::kWrite, offset,
             const_cast<uint8_t*>(data.data()), data.size(), fua))
      ->Start();
}

void RbdBackend::FlushAsync(IoRing* ring, IoCompletion& done) {
  (void)ring;
  if (read_only_) return done.Complete(absl::OkStatus());
  if (fenced()) return done.Complete(FencedError());
  (new (done.scratch())
       RbdOp(*this, done, RbdOp::Kind::kFlush, 0, nullptr, 0, false))
      ->Start();
}

namespace {

// Completes a synchronous call made through the asynchronous path.
class WaitCompletion final : public IoCompletion {
 public:
  void Complete(absl::Status status) override {
    MutexLock lock(&mu_);
    status_ = std::move(status);
    done_ = true;
    cv_.SignalAll();  // under the lock: the waiter may free this after it
  }
  absl::Status Wait() {
    MutexLock lock(&mu_);
    auto finished = [this]()
                        ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_; };
    while (!done_) cv_.WaitFor(&mu_, std::chrono::hours(1), finished);
    return status_;
  }

 private:
  Mutex mu_;
  CondVar cv_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

absl::Status RbdBackend::Read(uint64_t offset, std::span<uint8_t> buf) {
  WaitCompletion done;
  ReadAsync(offset, buf, nullptr, done);
  return done.Wait();
}

absl::Status RbdBackend::Write(uint64_t offset, std::span<const uint8_t> data,
                               bool fua) {
  WaitCompletion done;
  WriteAsync(offset, data, fua, nullptr, done);
  return done.Wait();
}

absl::Status RbdBackend::Flush() {
  WaitCompletion done;
  FlushAsync(nullptr, done);
  return done.Wait();
}

template <typename Fn>
absl::Status RbdBackend::Chunked(const char* what, uint64_t offset,
                                 uint64_t length, Fn fn) {
  if (absl::Status st = CheckWritable(); !st.ok()) return st;
  while (length > 0) {
    const uint64_t n = std::min(length, kMaxChunk);
    const ssize_t r = fn(offset, static_cast<size_t>(n));
    if (r < 0) return Failed(static_cast<int>(r), what, offset);
    offset += n;
    length -= n;
  }
  return absl::OkStatus();
}

absl::Status RbdBackend::Trim(uint64_t offset, uint64_t length, bool fua) {
  // Not rbd_discard: it skips the parts of a range smaller than
  // rbd_discard_granularity_bytes (64 KiB), which keep their data. Zeroing
  // without THICK_PROVISION discards too (whole objects are removed, the
  // object map updated) and zeroes those parts, so trimmed ranges read as
  // zeroes, as on every other backend.
  absl::Status st =
      Chunked("trim", offset, length, [this](uint64_t off, size_t n) {
        return rbd_write_zeroes(image_, off, n, 0, 0);
      });
  if (st.ok() && fua) st = Flush();
  return st;
}

absl::Status RbdBackend::Zero(uint64_t offset, uint64_t length,
                              ZeroOptions options) {
  if (options.fast) {
    if (absl::Status st = CheckWritable(); !st.ok()) return st;
    return absl::UnimplementedError(
        "fast zero: an rbd image zeroes through OSD operations");
  }
  // NO_HOLE: THICK_PROVISION writes the zeroes (a write-same), so the range
  // stays allocated.
  const int flags =
      options.may_trim ? 0 : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION;
  absl::Status st = Chunked("write zeroes", offset, length,
                            [this, flags](uint64_t off, size_t n) {
                              return rbd_write_zeroes(image_, off, n, flags, 0);
                            });
  if (st.ok() && options.fua) st = Flush();
  return st;
}

absl::Status RbdBackend::Extents(uint64_t offset, uint64_t length,
                                 absl::FunctionRef<bool(Extent)> visit) {
  struct Piece {
    uint64_t offset;
    uint64_t length;
    bool exists;
  };
  auto collect = [](uint64_t off, size_t len, int exists, void* arg) {
    static_cast<std::vector<Piece>*>(arg)->push_back(
        {off, static_cast<uint64_t>(len), exists != 0});
    return 0;
  };
  // Allocated pieces are data; gaps and pieces that do not exist (a
  // discarded object) are holes that read as zeroes. Neighbours of one
  // kind are merged, across windows too.
  const uint64_t end = offset + length;
  uint64_t pos = offset;
  Extent pending{0, 0};
  auto emit = [&](uint64_t until, uint32_t flags) {
    if (until <= pos) return true;
    if (pending.length > 0 && pending.flags != flags) {
      if (!visit(pending)) return false;
      pending.length = 0;
    }
    pending.flags = flags;
    pending.length += until - pos;
    pos = until;
    return true;
  };
  constexpr uint32_t kHole = kExtentHole | kExtentZero;
  // Window by window: what one diff collects stays bounded (a fragmented
  // object yields a piece per written run) whatever range is asked for.
  std::vector<Piece> pieces;
  for (uint64_t w = offset; w < end; w += kExtentsWindow) {
    const uint64_t w_end = std::min(end, w + kExtentsWindow);
    pieces.clear();
    // whole_object=0: extents as small as the objects' data (about 40 µs
    // an object here); include_parent: a clone's parent data counts.
    int r = rbd_diff_iterate2(image_, nullptr, w, w_end - w, 1, 0, collect,
                              &pieces);
    if (r < 0) return Failed(r, "block status", w);
    std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) {
      return a.offset < b.offset;
    });
    for (const Piece& p : pieces) {
      const uint64_t start = std::max(p.offset, pos);
      const uint64_t stop = std::min(p.offset + p.length, w_end);
      if (stop <= start) continue;
      if (!emit(start, kHole)) return absl::OkStatus();
      if (!emit(stop, p.exists ? 0 : kHole)) return absl::OkStatus();
    }
    if (!emit(w_end, kHole)) return absl::OkStatus();
  }
  if (pending.length > 0) visit(pending);
  return absl::OkStatus();
}

}  // namespace nbdmgr
