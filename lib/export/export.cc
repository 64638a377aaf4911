#include "lib/export/export.h"

#include "absl/strings/str_cat.h"
#include "lib/backend/file_backend.h"
#include "lib/backend/memory_backend.h"
#include "lib/backend/null_backend.h"
#include "lib/backend/rbd_backend.h"
#include "lib/util/mutex.h"

namespace nbdmgr {
namespace {

absl::StatusOr<std::unique_ptr<Backend>> OpenBackend(
    const ExportConfig& c, const BackendOpenOptions& open,
    FileBackend** created) {
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
  FileBackend* created = nullptr;
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      OpenBackend(config, open, &created);
  if (!backend.ok()) return backend.status();
  std::shared_ptr<Export> e =
      FromBackend(std::move(config), std::move(*backend), buffers);
  e->created_file_ = created;
  return e;
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
      tls_mode_(config_.tls),
      max_clients_(config_.max_clients),
      description_(config_.description),
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
  return c;
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
