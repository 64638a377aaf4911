#ifndef NBDMGR_LIB_CONTROL_EXPORT_MANAGER_H_
#define NBDMGR_LIB_CONTROL_EXPORT_MANAGER_H_

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "lib/buffer/buffer_policy.h"
#include "lib/export/bitmap_set.h"
#include "lib/export/export.h"
#include "lib/export/export_info.h"
#include "lib/export/export_registry.h"
#include "lib/qos/qos_gate.h"
#include "lib/state/bitmap_store.h"
#include "lib/state/qos_group_store.h"
#include "lib/state/state_store.h"
#include "lib/util/mutex.h"

namespace nbdmgr {

enum class DeleteMode { kSafe, kDrain, kHard };

// Fields of a live export that can change; unset ones stay as they are.
struct ExportUpdate {
  std::optional<std::string> description;
  std::optional<BufferStrategy> buffer_strategy;
  std::optional<uint64_t> memory_cap_bytes;
  std::optional<std::chrono::milliseconds> pool_idle_release;
  std::optional<TlsMode> tls;
  std::optional<uint32_t> max_clients;
  // Set: change the stall timeout to the inner value (nullopt: the
  // daemon's default).
  std::optional<std::optional<std::chrono::milliseconds>> stall_timeout;
  // Changes to the export's own QoS limits (applied at once, to requests
  // already waiting too).
  QosLimitsUpdate qos;
  // Set: move the export into this QoS group ("": out of any group).
  std::optional<std::string> qos_group;
  // Reopen a FAILED export's backend (after applying the fields above).
  bool retry = false;

  // Whether any field above is set (retry aside).
  bool changes_fields() const {
    return description || buffer_strategy || memory_cap_bytes ||
           pool_idle_release || tls || max_clients || stall_timeout ||
           !qos.empty() || qos_group;
  }
};

// How the manager reaches the connections of an export (nbd::Server).
class SessionControl {
 public:
  virtual ~SessionControl() = default;
  virtual void StopSessionsOf(const Export& e, bool hard) = 0;
};

struct ExportManagerOptions {
  // Where API-created exports are persisted; empty: not persisted.
  std::string state_dir;
  // File backends created over the API must resolve under one of these.
  std::vector<std::string> allow_paths;
  // The daemon has TLS credentials (exports may use tls=optional|require).
  bool tls_available = false;
  // The most exports (served, FAILED or being created) the daemon holds;
  // CreateExport beyond it gets ResourceExhausted.
  uint32_t max_exports = kDefaultMaxExports;
  // Create(): saved exports still opening after this long come up FAILED
  // (their opens finish, or not, in the background and are then closed);
  // 0: wait for them.
  std::chrono::milliseconds open_timeout{0};
  // QoS groups given on the command line or in the config file (not
  // persisted; exports may name them).
  std::vector<QosGroupConfig> qos_groups{};
};

// The domain API of the control plane: create, inspect, update and remove
// exports at run time, and persist the ones created through it. Plain C++
// (no protobuf); the gRPC service is a thin adapter over it.
//
// Contracts:
// - A call returns OK only once its change is durable in the state store,
//   and a call that fails changes nothing, live or persisted: changes are
//   written ahead, then applied (a file CreateExport made is removed
//   again if the export cannot be saved). The one exception is the state
//   store's: a filesystem that fails to flush the directory after a new
//   snapshot was renamed into place (an I/O error) gets the error
//   reported while a restart may show the change.
// - No backend is opened with the manager's lock held, so a slow or
//   hanging open never delays calls on other exports or reads; file
//   exports are opened one at a time (with the undo of a failed create),
//   so it delays other file creates and retries.
// - File exports created over the API are confined to the allowed
//   directories at every open (creation, start, retry): resolved beneath
//   them without symbolic links.
// - A persisted export whose backend cannot be opened at start (missing,
//   unreadable, no longer allowed, TLS no longer offered) is FAILED: kept,
//   listed with its reason, not served; UpdateExport with retry reopens it.
//   The other exports serve. A file is created only by the CreateExport
//   that asked for it, never when reopening.
// Thread-safe: mutations are serialized; a DRAIN delete waits without
// blocking others.
class ExportManager {
 public:
  // Loads the persisted exports and opens them into `registry` (which may
  // already hold command-line exports); the ones that cannot be opened are
  // FAILED. Fails, leaving the state untouched, if it cannot be read or
  // parsed or a persisted export clashes with a command-line one; the
  // message names the file. `registry` and `buffers` must outlive the
  // manager.
  static absl::StatusOr<std::unique_ptr<ExportManager>> Create(
      ExportManagerOptions options, ExportRegistry& registry,
      BufferSystem& buffers);

  // Must be set before DeleteExport is used with clients connected.
  void set_session_control(SessionControl* control) { sessions_ = control; }

  // InvalidArgument (bad config, not a regular file or block device),
  // AlreadyExists (also while that name is being created), FailedPrecondition
  // (TLS the daemon cannot offer), PermissionDenied (a file export without
  // allow_paths, a path not allowed or through a symbolic link), NotFound
  // (missing file), ResourceExhausted (at max_exports), the backend's
  // error, or the state store's (nothing of the export remains then).
  // rbd: FailedPrecondition naming the holder when another client holds the
  // image's exclusive lock, unless `take_over` (break it: the holder is
  // fenced). NotFound (pool, image), PermissionDenied (ceph user or caps),
  // Unavailable (cluster unreachable).
  absl::StatusOr<ExportInfo> CreateExport(ExportConfig config,
                                          bool take_over = false);
  // NotFound.
  absl::StatusOr<ExportInfo> GetExport(const std::string& name) const;

  struct Page {
    std::vector<ExportInfo> exports;
    std::string next_page_token;  // empty on the last page
  };
  // Sorted by name. InvalidArgument for a bad size or token.
  absl::StatusOr<Page> ListExports(int page_size,
                                   const std::string& page_token) const;
  // The updated config is validated whole (ValidateExportConfig), saved,
  // then applied. NotFound, InvalidArgument, FailedPrecondition (being
  // deleted, or TLS the daemon cannot offer), the state store's error, or
  // with retry on a FAILED export the open error (it stays FAILED).
  absl::StatusOr<ExportInfo> UpdateExport(const std::string& name,
                                          const ExportUpdate& update);
  // SAFE: FailedPrecondition while clients are connected. DRAIN: new
  // clients are refused, connected ones finish in-flight requests and are
  // closed; at `timeout` the rest are closed. HARD: flush, then close now.
  // The removal is saved before clients are touched. A FAILED export is
  // removed at once. Returns how many connections were closed. NotFound;
  // FailedPrecondition if already being deleted, created or retried.
  absl::StatusOr<int> DeleteExport(const std::string& name, DeleteMode mode,
                                   std::chrono::milliseconds timeout);

  // Dirty bitmaps of export `name` (see BitmapSet). Each change is saved
  // (with a state directory) before it is applied. NotFound (export or
  // bitmap), FailedPrecondition (the export is FAILED or being deleted),
  // BitmapSet's errors, or the bitmap store's.
  absl::StatusOr<BitmapInfo> AddBitmap(const std::string& name,
                                       const std::string& bitmap,
                                       uint64_t granularity);
  absl::StatusOr<std::vector<BitmapInfo>> ListBitmaps(
      const std::string& name) const;
  absl::StatusOr<BitmapInfo> ClearBitmap(const std::string& name,
                                         const std::string& bitmap);
  absl::Status RemoveBitmap(const std::string& name, const std::string& bitmap);
  // Freezes `frozen` and starts `started` atomically: returns (frozen,
  // started).
  absl::StatusOr<std::pair<BitmapInfo, BitmapInfo>> CheckpointBitmap(
      const std::string& name, const std::string& frozen,
      const std::string& started, uint64_t granularity);

  // Overlays. Reset: drops the overlay's changes (FailedPrecondition while
  // it has clients). Commit: writes them into its base export (which must
  // be writable, with no clients on it or its other overlays) and resets it.
  // NotFound, FailedPrecondition (not an overlay, FAILED, being deleted),
  // or the I/O error.
  absl::StatusOr<ExportInfo> ResetOverlay(const std::string& name);
  absl::StatusOr<ExportInfo> CommitOverlay(const std::string& name);
  // The overlays served on export `base`, by name. NotFound.
  absl::StatusOr<std::vector<ExportInfo>> ListOverlays(
      const std::string& base) const;

  // QoS groups. Create: InvalidArgument (name, limits), AlreadyExists,
  // ResourceExhausted (kMaxQosGroups), or the store's error. Update:
  // applies at once; a group given to the daemon is changed until it
  // stops (not saved). Delete: FailedPrecondition while exports (served
  // or FAILED) name it. Each change is saved (with a state directory)
  // before it applies. NotFound for an unknown group.
  absl::StatusOr<QosGroupInfo> CreateQosGroup(const QosGroupConfig& group);
  absl::StatusOr<QosGroupInfo> GetQosGroup(const std::string& name) const;
  std::vector<QosGroupInfo> ListQosGroups() const;  // by name
  absl::StatusOr<QosGroupInfo> UpdateQosGroup(const std::string& name,
                                              const QosLimitsUpdate& update);
  absl::Status DeleteQosGroup(const std::string& name);

  // The daemon is shutting down: DRAIN deletes in progress stop waiting
  // for their clients now and close them (the daemon's own drain, bounded
  // by --drain-timeout, takes over). Idempotent; thread-safe.
  void AbortDrains() { aborting_.store(true, std::memory_order_release); }

  // Waits for saved exports' openers that Create() stopped waiting for.
  ~ExportManager();

  // The daemon stops cleanly: saves `e`'s bitmaps with their bits, to be
  // trusted at the next start. Call after its last write and flush, with
  // the control plane stopped. No-op without a state directory.
  absl::Status SaveBitmapsAtStop(const Export& e);

  // The FAILED exports, by name (for metrics).
  std::vector<ExportInfo> FailedExports() const;

 private:
  struct SavedOpens;
  struct BoundedOpen;
  struct QosGroupEntry {
    std::shared_ptr<QosGroup> group;
    bool persistent = false;  // created over the API
  };
  struct FailedExport {
    ExportConfig config;
    std::string reason;
    std::chrono::system_clock::time_point since;
  };

  ExportManager(ExportManagerOptions options, ExportRegistry& registry,
                BufferSystem& buffers);
  // Opens the saved exports, in parallel, for at most open_timeout: the
  // ones still opening then get Unavailable (and are closed by their
  // threads if they finish). Results in `saved`'s order.
  std::vector<absl::StatusOr<std::shared_ptr<Export>>> OpenSaved(
      const std::vector<ExportConfig>& saved);
  // Open() for an API call: an rbd export not open within open_timeout
  // gets Unavailable, its open left to finish on a thread of its own,
  // which then closes it (at most kMaxBackgroundOpens at once; beyond,
  // Unavailable at once).
  absl::StatusOr<std::shared_ptr<Export>> OpenWithin(const ExportConfig& config,
                                                     bool may_create,
                                                     bool take_over);
  // Open() on an opening thread: an exception (std::bad_alloc) fails that
  // export with Internal instead of ending the process.
  absl::StatusOr<std::shared_ptr<Export>> OpenOnThread(
      const ExportConfig& config, bool may_create, bool take_over) const;
  // An opening thread ends (counted in bg_running_, and if `api` in
  // api_opens_, by whoever started it).
  void BackgroundDone(bool api);
  // What an open not finished within open_timeout gets.
  absl::Status StillOpening() const;
  // A served export whose bitmaps or overlay may change: NotFound, or
  // FailedPrecondition if FAILED or being deleted.
  absl::StatusOr<std::shared_ptr<Export>> FindServed(
      const std::string& name) const;
  // Loads what the bitmap store kept for `e` (served next) into it and
  // marks it in use; an unreadable file is set aside with an error logged.
  void RestoreBitmaps(Export& e) ABSL_LOCKS_EXCLUDED(mu_);
  // Removes the saved bitmaps of an export that is gone (errors logged).
  void ForgetBitmaps(const std::string& name) ABSL_LOCKS_EXCLUDED(mu_);
  // A served overlay: FindServed's errors, or FailedPrecondition.
  absl::StatusOr<std::shared_ptr<Export>> FindOverlay(
      const std::string& name) const;
  // What persists `e`'s bitmap settings before a change applies (each
  // bitmap in use: a crash before the next clean stop leaves it
  // inconsistent); none without a state directory.
  BitmapSet::Persist BitmapSaver(const Export& e);
  ExportInfo Describe(const Export& e) const;
  static ExportInfo DescribeFailed(const FailedExport& f);
  // OK if `path`, resolved, is a regular file of at most 1 MiB beneath an
  // allow_paths directory (resolved); PermissionDenied, InvalidArgument or
  // the errno's status naming it otherwise.
  absl::Status CheckCephConf(const std::string& path) const;
  // Opens `config`'s backend (confined for file exports; creating a
  // missing file only if `may_create`; breaking an rbd image's lock only
  // if `take_over`). Call without mu_ held.
  absl::StatusOr<std::shared_ptr<Export>> Open(const ExportConfig& config,
                                               bool may_create,
                                               bool take_over = false) const;
  // Records a created or updated export / a deleted one in the state
  // store (no-op without one); the error names what could not be saved.
  absl::Status PersistPut(const ExportConfig& config)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PersistDelete(const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The registered export `name`, or NotFound.
  absl::StatusOr<std::shared_ptr<Export>> FindExport(
      const std::string& name) const;
  // FailedPrecondition for a TLS mode the daemon cannot offer.
  absl::Status CheckTls(TlsMode mode) const;
  // Reopens the FAILED export `name` with `config` (its saved config with
  // the update's fields), saving `config` first if `save`; the caller has
  // put `name` in pending_. On an error nothing changes but the reason.
  absl::StatusOr<ExportInfo> Retry(const std::string& name, ExportConfig config,
                                   bool save);

  // Loads the groups given to the daemon and the saved ones (a name in
  // both: FailedPrecondition naming the file).
  absl::Status LoadQosGroups() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Joins `e` to the group its config names (none: leaves any). NotFound
  // for a group that does not exist.
  absl::Status AttachQosGroup(Export& e, const std::string& group)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckQosGroup(const std::string& group) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Saves the API-created groups with `name` set to `config` (nullopt:
  // removed); no-op without a state directory.
  absl::Status PersistQosGroups(const std::string& name,
                                const std::optional<QosGroupConfig>& config)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The exports (served or FAILED) whose configuration names each group,
  // sorted, by group.
  std::map<std::string, std::vector<std::string>> QosGroupMembers() const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  QosGroupInfo DescribeQosGroup(
      const QosGroupEntry& entry,
      const std::map<std::string, std::vector<std::string>>& members) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ExportManagerOptions options_;
  ExportRegistry& registry_;
  BufferSystem& buffers_;
  SessionControl* sessions_ = nullptr;
  std::atomic<bool> aborting_{false};
  std::unique_ptr<StateStore> store_;
  // <state_dir>/bitmaps; null without a state directory.
  std::unique_ptr<BitmapStore> bitmap_store_;
  Mutex bg_mu_;
  CondVar bg_done_;
  // Threads of OpenSaved and OpenWithin still running; of them OpenWithin's
  // (capped at kMaxBackgroundOpens).
  size_t bg_running_ ABSL_GUARDED_BY(bg_mu_) = 0;
  size_t api_opens_ ABSL_GUARDED_BY(bg_mu_) = 0;

  // Held while a file export is opened by CreateExport or Retry, and until
  // a failed create's file is removed again (taken before mu_).
  std::mutex open_mu_;
  mutable Mutex mu_;
  // Names of the API-created (persisted) exports that are served; their
  // configs live in the registry and the state store.
  std::set<std::string> persistent_ ABSL_GUARDED_BY(mu_);
  // Persisted exports that could not be opened: not in the registry.
  std::map<std::string, FailedExport> failed_ ABSL_GUARDED_BY(mu_);
  // Serializes bitmap changes and their saves; taken before mu_, never
  // while mu_ is held.
  Mutex mu_bitmaps_;
  // Serializes overlay resets and commits (taken before mu_).
  Mutex mu_overlays_;
  // QoS groups, by name.
  std::map<std::string, QosGroupEntry> qos_groups_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<QosGroupStore> qos_store_;  // null without a state dir
  // Names whose backend is being opened outside the lock (a create or a
  // retry): taken, but in neither the registry nor failed_ yet.
  std::set<std::string> pending_ ABSL_GUARDED_BY(mu_);
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_CONTROL_EXPORT_MANAGER_H_
