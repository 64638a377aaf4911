#ifndef NBDMGR_LIB_EXPORT_EXPORT_H_
#define NBDMGR_LIB_EXPORT_EXPORT_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "lib/backend/backend.h"
#include "lib/export/bitmap_set.h"
#include "lib/export/export_config.h"
#include "lib/metrics/io_stats.h"
#include "lib/qos/qos_gate.h"
#include "lib/util/mutex.h"

namespace nbdmgr {

class FileBackend;
class OverlayBackend;
class Export;

// How Export::Create opens its backend.
struct BackendOpenOptions {
  // Non-empty: a file backend's path must lie beneath one of these
  // directories, reached without symbolic links (exports created over the
  // API, at creation and at every reopen).
  std::vector<std::string> confine_to;
  // Whether a missing file may be created (when the config asks for it).
  // False when a persisted export is reopened: a file is created only by
  // the API call that asked for it.
  bool may_create = true;
  // rbd: break another client's exclusive lock on the image (fencing it)
  // instead of failing. Never persisted: only the call that asks for it.
  bool take_over = false;
  // Overlays whose base is an export: finds the served export of that
  // name (null: none). Unset: such overlays cannot be opened.
  std::function<std::shared_ptr<Export>(const std::string&)> find_export;
};

// One served export: its configuration, its open backend and live state.
// Thread-safe: config() and the backend are immutable after Create(); the
// live settings (description, TLS mode, client cap, stall timeout, buffer
// settings), the draining flag and the client count are atomic or locked.
// Shared by the registry and every session using it (std::shared_ptr), so it
// outlives its removal from the registry until the last session ends.
class Export {
 public:
  // Validates `config` and opens its backend. Returns the validation or
  // backend-open error unchanged. `buffers` must outlive the export.
  static absl::StatusOr<std::shared_ptr<Export>> Create(
      ExportConfig config, BufferSystem& buffers,
      const BackendOpenOptions& open = {});

  // Undoes the creation of the backend's file, if opening it created one
  // (a CreateExport that could not be persisted). Call before the export
  // serves anyone.
  void RemoveCreatedFile();

  // For tests and decorators: serve an already-built backend.
  static std::shared_ptr<Export> FromBackend(ExportConfig config,
                                             std::unique_ptr<Backend> backend,
                                             BufferSystem& buffers);
  ~Export();

  // The configuration the export was created with. Buffer settings, the
  // description, TLS mode, client cap and stall timeout may have changed
  // since: see current_config().
  const ExportConfig& config() const { return config_; }
  // The configuration with every live change applied.
  ExportConfig current_config() const;
  std::string description() const;
  void set_description(std::string d);
  // Whether new clients must use TLS; changes apply to new connections.
  TlsMode tls_mode() const { return tls_mode_.load(std::memory_order_acquire); }
  void set_tls_mode(TlsMode m) {
    tls_mode_.store(m, std::memory_order_release);
  }
  std::chrono::system_clock::time_point created() const { return created_; }
  // A draining export is invisible to new clients (LIST, INFO, GO) while
  // connected ones finish; set by ExportManager::DeleteExport.
  bool draining() const { return draining_.load(std::memory_order_seq_cst); }
  // seq_cst, with TryAddClient: a client either is counted before the
  // deleter reads clients() (and is stopped) or sees draining and is
  // refused; none slips in unseen.
  void set_draining() { draining_.store(true, std::memory_order_seq_cst); }
  const std::string& name() const { return config_.name; }
  Backend& backend() const { return *backend_; }
  uint64_t size() const { return size_; }
  const BackendCaps& caps() const { return caps_; }
  // rbd exports: who holds the image's exclusive lock ("ADDR (this
  // daemon)" while this writable export holds it, else "": never asks the
  // cluster), and whether this daemon was fenced off the image (its lock
  // broken, or its client blocklisted).
  std::string lock_owner() const;
  bool fenced() const;
  bool read_only() const { return config_.read_only; }
  // Served read-only to new clients: configured so, or the base of
  // overlays (while any exists nothing may write it).
  bool served_read_only() const { return read_only() || overlays() > 0; }

  // Overlays: how many exports use this one as their base.
  int overlays() const { return overlays_.load(std::memory_order_seq_cst); }
  // The overlay backend, if this export is one (else null).
  OverlayBackend* overlay() const { return overlay_; }
  // The export this overlay reads through to (null if none, or a file).
  const std::shared_ptr<Export>& base_export() const { return base_export_; }
  const BlockSizes& block_sizes() const { return block_sizes_; }
  // Request buffers: strategy, cap and counters; settings change at run time.
  ExportBuffers& buffers() { return buffers_; }
  const ExportBuffers& buffers() const { return buffers_; }

  // Dirty bitmaps; the data path marks every write, trim and zero in them
  // (before its reply is sent).
  BitmapSet& bitmaps() const { return bitmaps_; }

  // Quality of service: the limits and group every request passes (the
  // data path); change them with set_qos_limits and set_qos_group.
  QosGate& qos() const { return qos_; }
  void set_qos_limits(const QosLimits& limits) { qos_.SetLimits(limits); }
  // Joins `group` (null: leaves any); current_config() names it.
  void set_qos_group(std::shared_ptr<QosGroup> group);

  // Request counters, merged from the export's connections.
  ExportIoStats& io_stats() const { return io_stats_; }

  // Connected clients (sessions in transmission on this export).
  int clients() const { return clients_.load(std::memory_order_seq_cst); }
  // Counts one more client unless the export has max_clients() already or
  // is being deleted (draining).
  bool TryAddClient();
  void RemoveClient() { clients_.fetch_sub(1, std::memory_order_relaxed); }
  // The cap on connected clients (0: none); changes apply to new clients.
  uint32_t max_clients() const {
    return max_clients_.load(std::memory_order_relaxed);
  }
  void set_max_clients(uint32_t n) {
    max_clients_.store(n, std::memory_order_relaxed);
  }
  // The export's stall timeout in ms: -1 for the daemon's default, 0 for
  // never. Read by its sessions' watchdogs; changes apply at once.
  int64_t stall_timeout_ms() const {
    return stall_timeout_ms_.load(std::memory_order_relaxed);
  }
  void set_stall_timeout(std::optional<std::chrono::milliseconds> t) {
    stall_timeout_ms_.store(t ? t->count() : -1, std::memory_order_relaxed);
  }

 private:
  Export(ExportConfig config, std::unique_ptr<Backend> backend,
         BufferSystem& buffers);
  // Counts an overlay on this export. The first one is refused
  // (FailedPrecondition) while a writable export has clients (they may
  // have been told they can write).
  absl::Status AddOverlay();

  const ExportConfig config_;
  const std::unique_ptr<Backend> backend_;
  FileBackend* created_file_ = nullptr;  // the backend, if it made its file
  const uint64_t size_;
  const BackendCaps caps_;
  const BlockSizes block_sizes_;
  ExportBuffers buffers_;
  mutable ExportIoStats io_stats_;
  mutable BitmapSet bitmaps_;
  mutable QosGate qos_;
  std::atomic<int> clients_{0};
  std::atomic<bool> draining_{false};
  std::atomic<TlsMode> tls_mode_;
  std::atomic<uint32_t> max_clients_;
  std::atomic<int64_t> stall_timeout_ms_{-1};
  std::atomic<int> overlays_{0};
  OverlayBackend* overlay_ = nullptr;
  // Held by an overlay on an export: keeps it alive and read-only.
  std::shared_ptr<Export> base_export_;
  mutable Mutex mu_;
  std::string description_ ABSL_GUARDED_BY(mu_);
  std::string qos_group_ ABSL_GUARDED_BY(mu_);
  const std::chrono::system_clock::time_point created_;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_EXPORT_EXPORT_H_
