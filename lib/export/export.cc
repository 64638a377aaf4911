#include "lib/export/export.h"

#include "absl/strings/str_cat.h"
#include "lib/backend/file_backend.h"
#include "lib/backend/memory_backend.h"
#include "lib/backend/null_backend.h"
#include "lib/backend/overlay_backend.h"
#include "lib/backend/rbd_backend.h"
#include "lib/util/mutex.h"

namespace nbdmgr {
namespace {

// An overlay on `base_export` (or, if null, on the file c.base).
absl::StatusOr<std::unique_ptr<Backend>> OpenOverlay(
    const ExportConfig& c, const BackendOpenOptions& open,
    const std::shared_ptr<Export>& base_export, FileBackend** created,
    OverlayBackend** overlay) {
  std::shared_ptr<Backend> base;
  if (base_export != nullptr) {
    // Aliasing: the backend, kept alive by its export.
    base = std::shared_ptr<Backend>(base_export, &base_export->backend());
  } else {
    auto b = FileBackend::Open(
        FileBackendOptions{c.base, /*read_only=*/true, std::nullopt,
                           /*create=*/false, open.confine_to, FileIo::kAuto});
    if (!b.ok()) {
      return absl::Status(b.status().code(),
                          absl::StrCat("base ", b.status().message()));
    }
    base = std::shared_ptr<Backend>(std::move(*b));
  }
  if (c.size.has_value() && *c.size != base->size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("an overlay has its base's size (", base->size(),
                     " bytes), not ", *c.size));
  }
  OverlayOptions o;
  o.file = FileBackendOptions{c.path,          c.read_only,
                              std::nullopt,    c.create && open.may_create,
                              open.confine_to, FileIo::kThreads};
  o.cluster_size = c.cluster_size;
  o.base_name = c.base;
  auto ov = OverlayBackend::Open(o, std::move(base));
  if (!ov.ok()) return ov.status();
  if ((*ov)->file().created_file()) *created = &(*ov)->file();
  *overlay = ov->get();
  return std::unique_ptr<Backend>(std::move(*ov));
}

absl::StatusOr<std::unique_ptr<Backend>> OpenBackend(
    const ExportConfig& c, const BackendOpenOptions& open,
    const std::shared_ptr<Export>& base_export, FileBackend** created,
    OverlayBackend** overlay) {
  switch (c.backend) {
    case BackendKind::kMemory: {
      auto b = MemoryBackend::Create(*c.size);
      if (!b.ok()) return b.status();
      return std::unique_ptr<Backend>(std::move(*b));
    }
    case BackendKind::kNull: {
      auto b = NullBackend::Create(*c.size);
      if (!b.ok()) return b.status();
      return std::unique_ptr<Backend>(std::move(*b));
    }
    case BackendKind::kFile: {
      if (!c.base.empty()) {
        return OpenOverlay(c, open, base_export, created, overlay);
      }
      auto b = FileBackend::Open(FileBackendOptions{c.path, c.read_only, c.size,
                                                    c.create && open.may_create,
                                                    open.confine_to, c.io});
      if (!b.ok()) return b.status();
      if ((*b)->created_file()) *created = b->get();
      return std::unique_ptr<Backend>(std::move(*b));
    }
    case BackendKind::kRbd: {
      RbdOptions o;
      o.pool = c.rbd.pool;
      o.image = c.rbd.image;
      o.ns = c.rbd.ns;
      o.snapshot = c.rbd.snapshot;
      o.ceph_conf = c.rbd.ceph_conf;
      o.ceph_user = c.rbd.ceph_user;
      o.read_only = c.read_only;
      if (open.may_create) o.create_size = c.size;
      o.take_over = open.take_over;
      auto b = RbdBackend::Open(o);
      if (!b.ok()) return b.status();
      if (c.size.has_value() && (*b)->size() != *c.size) {
        return absl::FailedPreconditionError(absl::StrCat(
            "image ", c.rbd.pool, "/", c.rbd.image, " has ", (*b)->size(),
            " bytes, not the ", *c.size, " the export asks for"));
      }
      return std::unique_ptr<Backend>(std::move(*b));
    }
  }
  return absl::InvalidArgumentError("unknown backend");
}

}  // namespace

absl::StatusOr<std::shared_ptr<Export>> Export::Create(
    ExportConfig config, BufferSystem& buffers,
    const BackendOpenOptions& open) {
  if (absl::Status st = ValidateExportConfig(config); !st.ok()) return st;
  std::shared_ptr<Export> base_export;
  if (!config.base.empty() && config.base.front() != '/') {
    if (open.find_export) base_export = open.find_export(config.base);
    if (base_export == nullptr || base_export->draining()) {
      return absl::NotFoundError(absl::StrCat("base export \"", config.base,
                                              "\" not found (a base must be "
                                              "served before its overlays)"));
    }
    if (absl::Status st = base_export->AddOverlay(); !st.ok()) return st;
  }
  FileBackend* created = nullptr;
  OverlayBackend* overlay = nullptr;
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      OpenBackend(config, open, base_export, &created, &overlay);
  if (!backend.ok()) {
    if (base_export != nullptr) base_export->overlays_.fetch_sub(1);
    return backend.status();
  }
  std::shared_ptr<Export> e =
      FromBackend(std::move(config), std::move(*backend), buffers);
  e->created_file_ = created;
  e->overlay_ = overlay;
  e->base_export_ = std::move(base_export);
  return e;
}

absl::Status Export::AddOverlay() {
  // The first overlay makes the export read-only for new clients; ones
  // connected before may have been told they can write.
  if (overlays_.fetch_add(1, std::memory_order_seq_cst) == 0 && !read_only() &&
      clients() > 0) {
    overlays_.fetch_sub(1, std::memory_order_seq_cst);
    return absl::FailedPreconditionError(absl::StrCat(
        "base export \"", name(), "\" is writable and has ", clients(),
        " client(s) connected: an overlay needs a base no one writes "
        "(disconnect them, or make the base read-only)"));
  }
  return absl::OkStatus();
}

Export::~Export() {
  if (base_export_ != nullptr) base_export_->overlays_.fetch_sub(1);
}

void Export::RemoveCreatedFile() {
  if (created_file_ != nullptr) created_file_->RemoveCreatedFile();
}

std::shared_ptr<Export> Export::FromBackend(ExportConfig config,
                                            std::unique_ptr<Backend> backend,
                                            BufferSystem& buffers) {
  return std::shared_ptr<Export>(
      new Export(std::move(config), std::move(backend), buffers));
}

Export::Export(ExportConfig config, std::unique_ptr<Backend> backend,
               BufferSystem& buffers)
    : config_(std::move(config)),
      backend_(std::move(backend)),
      size_(backend_->size()),
      caps_(backend_->caps()),
      block_sizes_(config_.block_sizes),
      buffers_(buffers, config_.buffers),
      bitmaps_(size_),
      qos_(config_.qos),
      tls_mode_(config_.tls),
      max_clients_(config_.max_clients),
      description_(config_.description),
      qos_group_(config_.qos_group),
      created_(std::chrono::system_clock::now()) {
  set_stall_timeout(config_.stall_timeout);
}

ExportConfig Export::current_config() const {
  ExportConfig c = config_;
  c.description = description();
  c.buffers = buffers_.settings();
  c.tls = tls_mode();
  c.max_clients = max_clients();
  const int64_t stall = stall_timeout_ms();
  c.stall_timeout = stall < 0 ? std::nullopt
                              : std::optional(std::chrono::milliseconds(stall));
  c.qos = qos_.limits();
  MutexLock lock(&mu_);
  c.qos_group = qos_group_;
  return c;
}

void Export::set_qos_group(std::shared_ptr<QosGroup> group) {
  MutexLock lock(&mu_);
  qos_group_ = group != nullptr ? group->name() : "";
  qos_.SetGroup(std::move(group));
}

bool Export::TryAddClient() {
  int n = clients_.load(std::memory_order_relaxed);
  do {
    const uint32_t max = max_clients();
    if (max != 0 && n >= static_cast<int>(max)) return false;
  } while (!clients_.compare_exchange_weak(n, n + 1, std::memory_order_seq_cst,
                                           std::memory_order_relaxed));
  if (draining()) {  // set meanwhile: back out (see set_draining)
    RemoveClient();
    return false;
  }
  return true;
}

std::string Export::lock_owner() const {
  const auto* rbd = dynamic_cast<const RbdBackend*>(backend_.get());
  if (rbd == nullptr) return std::string();
  if (!rbd->read_only() && !rbd->fenced()) {
    return rbd->client_address() + " (this daemon)";
  }
  // Asking the cluster who holds it is an OSD operation, which may wait as
  // long as the cluster is unreachable: not on the control plane's path.
  return std::string();
}

bool Export::fenced() const {
  const auto* rbd = dynamic_cast<const RbdBackend*>(backend_.get());
  return rbd != nullptr && rbd->fenced();
}

std::string Export::description() const {
  MutexLock lock(&mu_);
  return description_;
}

void Export::set_description(std::string d) {
  MutexLock lock(&mu_);
  description_ = std::move(d);
}

}  // namespace nbdmgr
