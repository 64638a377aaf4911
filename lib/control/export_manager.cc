#include "lib/control/export_manager.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <exception>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "lib/util/duration.h"
#include "lib/util/errors.h"
#include "lib/util/mutex.h"
#include "lib/util/strings.h"
#include "spdlog/spdlog.h"

namespace nbdmgr {
namespace {

// Saved exports opened at once at start-up.
constexpr size_t kMaxParallelOpens = 16;
// API calls' rbd opens left waiting in the background at once (each holds
// a thread): beyond it, calls are refused at once.
constexpr size_t kMaxBackgroundOpens = 32;

absl::Status Saving(absl::Status st) {
  if (st.ok()) return st;
  return absl::Status(st.code(), absl::StrCat("saving state: ", st.message()));
}

// `c` with the fields `u` sets.
ExportConfig Updated(ExportConfig c, const ExportUpdate& u) {
  if (u.description) c.description = *u.description;
  if (u.buffer_strategy) c.buffers.strategy = *u.buffer_strategy;
  if (u.memory_cap_bytes) c.buffers.memory_cap_bytes = *u.memory_cap_bytes;
  if (u.pool_idle_release) c.buffers.pool_idle_release = *u.pool_idle_release;
  if (u.tls) c.tls = *u.tls;
  if (u.max_clients) c.max_clients = *u.max_clients;
  if (u.stall_timeout) c.stall_timeout = *u.stall_timeout;
  c.qos = u.qos.AppliedTo(c.qos);
  if (u.qos_group) c.qos_group = *u.qos_group;
  return c;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ExportManager>> ExportManager::Create(
    ExportManagerOptions options, ExportRegistry& registry,
    BufferSystem& buffers) {
  std::unique_ptr<ExportManager> m(
      new ExportManager(std::move(options), registry, buffers));
  if (!m->options_.state_dir.empty()) {
    absl::StatusOr<std::unique_ptr<StateStore>> store =
        StateStore::Open(m->options_.state_dir);
    if (!store.ok()) return store.status();
    m->store_ = std::move(*store);
    m->qos_store_ = std::make_unique<QosGroupStore>(m->options_.state_dir);
  }
  {
    MutexLock lock(&m->mu_);
    if (absl::Status st = m->LoadQosGroups(); !st.ok()) return st;
    for (const auto& e : registry.List()) {
      const std::string& group = e->config().qos_group;
      if (absl::Status st = m->AttachQosGroup(*e, group); !st.ok()) {
        return absl::FailedPreconditionError(
            absl::StrCat("export ", e->name(), ": ", st.message(),
                         " (give it with --qos-group)"));
      }
    }
  }
  if (m->options_.state_dir.empty()) return m;
  m->bitmap_store_ = std::make_unique<BitmapStore>(
      absl::StrCat(m->options_.state_dir, "/bitmaps"));
  absl::StatusOr<std::vector<ExportConfig>> saved = m->store_->Load();
  if (!saved.ok()) return saved.status();
  for (const ExportConfig& c : *saved) {
    if (registry.Find(c.name) != nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          m->store_->path(), ": export \"", c.name,
          "\" is also given on the command line; remove one of them"));
    }
  }
  if (saved->size() + registry.List().size() > m->options_.max_exports) {
    spdlog::warn(
        "{} exports saved and given, more than --max-exports {}: all are "
        "kept, but no more can be created",
        saved->size() + registry.List().size(), m->options_.max_exports);
  }
  for (const auto& e : registry.List()) m->RestoreBitmaps(*e);
  // In rounds: an overlay opens once its base export is served (a base
  // that never is leaves it FAILED with NotFound).
  std::vector<ExportConfig> remaining = *saved;
  while (!remaining.empty()) {
    std::set<std::string> waiting;
    for (const ExportConfig& c : remaining) waiting.insert(c.name);
    std::vector<ExportConfig> ready, later;
    for (ExportConfig& c : remaining) {
      const bool on_saved_export = !c.base.empty() && c.base.front() != '/' &&
                                   registry.Find(c.base) == nullptr &&
                                   waiting.contains(c.base);
      (on_saved_export ? later : ready).push_back(std::move(c));
    }
    if (ready.empty()) ready.swap(later);  // a cycle: all fail (NotFound)
    remaining = std::move(later);
    std::vector<absl::StatusOr<std::shared_ptr<Export>>> opened =
        m->OpenSaved(ready);
    for (size_t i = 0; i < ready.size(); ++i) {
      const ExportConfig& c = ready[i];
      absl::StatusOr<std::shared_ptr<Export>>& e = opened[i];
      if (e.ok()) m->RestoreBitmaps(**e);
      MutexLock lock(&m->mu_);
      if (e.ok()) {
        if (absl::Status st = m->AttachQosGroup(**e, c.qos_group); !st.ok()) {
          e = st;
        }
      }
      if (!e.ok()) {
        spdlog::error(
            "export \"{}\" is FAILED and not served: {} (fix it, then "
            "`nbdctl update {} --retry`, or remove it)",
            c.name, e.status().message(), c.name);
        m->failed_[c.name] = FailedExport{c, std::string(e.status().message()),
                                          std::chrono::system_clock::now()};
        continue;
      }
      if (absl::Status st = registry.Add(*e); !st.ok()) return st;
      m->persistent_.insert(c.name);
    }
  }
  return m;
}

// The openers of saved exports, shared with their threads: Create() may
// stop waiting for them, the manager's destructor may not.
struct ExportManager::SavedOpens {
  explicit SavedOpens(std::vector<ExportConfig> c) : configs(std::move(c)) {
    results.resize(configs.size());
  }
  const std::vector<ExportConfig> configs;
  std::atomic<size_t> next{0};
  Mutex mu;
  CondVar changed;
  std::vector<std::optional<absl::StatusOr<std::shared_ptr<Export>>>> results
      ABSL_GUARDED_BY(mu);
  size_t done ABSL_GUARDED_BY(mu) = 0;
  bool gave_up ABSL_GUARDED_BY(mu) = false;
};

absl::StatusOr<std::shared_ptr<Export>> ExportManager::OpenOnThread(
    const ExportConfig& config, bool may_create, bool take_over) const {
  try {
    return Open(config, may_create, take_over);
  } catch (const std::exception& e) {  // std::bad_alloc: fail this one
    return absl::InternalError(e.what());
  }
}

void ExportManager::BackgroundDone(bool api) {
  MutexLock lock(&bg_mu_);
  --bg_running_;
  if (api) --api_opens_;
  bg_done_.SignalAll();
}

absl::Status ExportManager::StillOpening() const {
  return absl::UnavailableError(absl::StrCat(
      "still opening after ", FormatDuration(options_.open_timeout),
      " (--open-timeout): its storage does not answer; the open goes on in "
      "the background and is closed if it ever finishes"));
}

std::vector<absl::StatusOr<std::shared_ptr<Export>>> ExportManager::OpenSaved(
    const std::vector<ExportConfig>& saved) {
  // In parallel: an rbd export whose cluster does not answer takes its
  // connect timeout, and the daemon serves nothing until this returns.
  // Bounded by open_timeout: an OSD that never answers (librbd's opens
  // wait for it) must not keep the other exports from being served.
  auto op = std::make_shared<SavedOpens>(saved);
  const size_t threads = std::min(saved.size(), kMaxParallelOpens);
  {
    MutexLock lock(&bg_mu_);
    bg_running_ += threads;  // not capped: the start's own
  }
  for (size_t t = 0; t < threads; ++t) {
    std::thread([this, op] {
      for (size_t i; (i = op->next.fetch_add(1)) < op->configs.size();) {
        {
          MutexLock lock(&op->mu);
          if (op->gave_up) break;
        }
        absl::StatusOr<std::shared_ptr<Export>> r =
            OpenOnThread(op->configs[i], false, false);
        std::shared_ptr<Export> late;  // closed outside the lock
        {
          MutexLock lock(&op->mu);
          if (!op->gave_up) {
            op->results[i] = std::move(r);
            ++op->done;
            op->changed.SignalAll();
            continue;
          }
          if (r.ok()) late = std::move(*r);
        }
        if (late != nullptr) {
          spdlog::warn(
              "export \"{}\" opened only after the start stopped waiting "
              "for it: closed again (`nbdctl update {} --retry` serves it)",
              late->name(), late->name());
        }
      }
      BackgroundDone(/*api=*/false);
    }).detach();
  }
  std::vector<absl::StatusOr<std::shared_ptr<Export>>> out;
  MutexLock lock(&op->mu);
  auto all_done = [&op]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(op->mu) {
    return op->done == op->configs.size();
  };
  if (options_.open_timeout.count() == 0) {
    while (!all_done()) {
      op->changed.WaitFor(&op->mu, std::chrono::hours(1), all_done);
    }
  } else {
    op->changed.WaitFor(&op->mu, options_.open_timeout, all_done);
  }
  op->gave_up = true;
  for (size_t i = 0; i < saved.size(); ++i) {
    out.push_back(op->results[i].has_value() ? std::move(*op->results[i])
                                             : StillOpening());
  }
  return out;
}

// One rbd open an API call waits for at most open_timeout.
struct ExportManager::BoundedOpen {
  Mutex mu;
  CondVar done;
  std::optional<absl::StatusOr<std::shared_ptr<Export>>> result
      ABSL_GUARDED_BY(mu);
  bool gave_up ABSL_GUARDED_BY(mu) = false;
};

absl::StatusOr<std::shared_ptr<Export>> ExportManager::OpenWithin(
    const ExportConfig& config, bool may_create, bool take_over) {
  // Only rbd opens wait on a remote system without a bound of their own.
  if (config.backend != BackendKind::kRbd ||
      options_.open_timeout.count() == 0) {
    return Open(config, may_create, take_over);
  }
  {
    MutexLock lock(&bg_mu_);
    if (api_opens_ >= kMaxBackgroundOpens) {
      return absl::UnavailableError(absl::StrCat(
          api_opens_,
          " earlier opens still wait on storage that does not answer; "
          "try again when it does"));
    }
    ++bg_running_;
    ++api_opens_;
  }
  auto op = std::make_shared<BoundedOpen>();
  std::thread([this, op, config, may_create, take_over] {
    absl::StatusOr<std::shared_ptr<Export>> r =
        OpenOnThread(config, may_create, take_over);
    std::shared_ptr<Export> late;  // closed outside the lock
    {
      MutexLock lock(&op->mu);
      if (!op->gave_up) {
        op->result = std::move(r);
        op->done.SignalAll();
      } else if (r.ok()) {
        late = std::move(*r);
      }
    }
    if (late != nullptr) {
      spdlog::warn(
          "export \"{}\" opened only after its call stopped waiting for it: "
          "closed again",
          late->name());
      late.reset();  // releases an rbd lock
    }
    BackgroundDone(/*api=*/true);
  }).detach();
  MutexLock lock(&op->mu);
  op->done.WaitFor(&op->mu, options_.open_timeout,
                   [&op]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(op->mu) {
                     return op->result.has_value();
                   });
  if (op->result.has_value()) return std::move(*op->result);
  op->gave_up = true;
  return StillOpening();
}

ExportManager::~ExportManager() {
  // Opening threads (the start's and API calls') use this manager: wait
  // for them (at shutdown the daemon's watchdog bounds this).
  MutexLock lock(&bg_mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(bg_mu_) {
    return bg_running_ == 0;
  };
  while (!idle()) bg_done_.WaitFor(&bg_mu_, std::chrono::hours(1), idle);
}

ExportManager::ExportManager(ExportManagerOptions options,
                             ExportRegistry& registry, BufferSystem& buffers)
    : options_(std::move(options)), registry_(registry), buffers_(buffers) {}

absl::StatusOr<std::shared_ptr<Export>> ExportManager::Open(
    const ExportConfig& config, bool may_create, bool take_over) const {
  if (absl::Status st = CheckTls(config.tls); !st.ok()) return st;
  if (config.backend == BackendKind::kFile && options_.allow_paths.empty()) {
    return absl::PermissionDeniedError(
        "file exports over the API need the daemon to be started with "
        "--allow-path DIR");
  }
  if (config.backend == BackendKind::kRbd && !config.rbd.ceph_conf.empty()) {
    if (absl::Status st = CheckCephConf(config.rbd.ceph_conf); !st.ok()) {
      return st;
    }
  }
  return Export::Create(
      config, buffers_,
      BackendOpenOptions{
          options_.allow_paths, may_create, take_over,
          [this](const std::string& name) { return registry_.Find(name); }});
}

absl::Status ExportManager::CheckCephConf(const std::string& path) const {
  // Resolved, so a symbolic link cannot lead outside the allowed
  // directories; a regular file of at most 1 MiB (librados reads it whole).
  char* real = ::realpath(path.c_str(), nullptr);
  if (real == nullptr) {
    return ErrnoStatus(errno, absl::StrCat("ceph_conf ", path));
  }
  const std::string resolved = real;
  std::free(real);
  bool allowed = false;
  for (const std::string& dir : options_.allow_paths) {
    char* d = ::realpath(dir.c_str(), nullptr);
    if (d == nullptr) continue;
    std::string prefix = d;
    std::free(d);
    if (prefix == "/" || absl::StartsWith(resolved, prefix + "/")) {
      allowed = true;
      break;
    }
  }
  if (!allowed) {
    // librados reads whatever file it is given (and names what it could
    // not parse): over the API only files the operator allowed.
    return absl::PermissionDeniedError(absl::StrCat(
        "ceph_conf ", path,
        " is not under a directory the daemon allows (--allow-path)"));
  }
  struct stat st;
  if (::stat(resolved.c_str(), &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("ceph_conf ", path));
  }
  if (!S_ISREG(st.st_mode) || st.st_size > (1 << 20)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ceph_conf ", path, " is not a regular file of at most 1 MiB"));
  }
  return absl::OkStatus();
}

ExportInfo ExportManager::Describe(const Export& e) const {
  ExportInfo info;
  info.config = e.current_config();
  info.size = e.size();
  info.block_sizes = e.block_sizes();
  const BackendCaps caps = e.caps();
  info.multi_conn = caps.can_multi_conn;
  info.io = info.config.backend == BackendKind::kRbd ? "librbd"
            : caps.async                             ? "io_uring"
            : caps.blocking                          ? "threads"
                                                     : "inline";
  info.lock_owner = e.lock_owner();
  info.clients = e.clients();
  if (e.overlay() != nullptr) info.overlay = e.overlay()->stats();
  info.overlays = e.overlays();
  info.created = e.created();
  info.state = e.draining() ? ExportState::kDraining : ExportState::kActive;
  if (e.fenced()) {
    // Another host took the image over: nothing more is written through
    // this export (its clients get errors); remove it.
    info.state = ExportState::kFailed;
    info.failure =
        "fenced: another client took the rbd image's lock over (this "
        "daemon is blocklisted); writes fail, remove the export";
  }
  {
    MutexLock lock(&mu_);
    info.persistent = persistent_.contains(e.name());
  }
  return info;
}

ExportInfo ExportManager::DescribeFailed(const FailedExport& f) {
  ExportInfo info;
  info.config = f.config;
  info.size = f.config.size.value_or(0);  // as configured; nothing is open
  info.block_sizes = f.config.block_sizes;
  info.created = f.since;
  info.state = ExportState::kFailed;
  info.failure = f.reason;
  info.persistent = true;
  return info;
}

std::vector<ExportInfo> ExportManager::FailedExports() const {
  MutexLock lock(&mu_);
  std::vector<ExportInfo> out;
  for (const auto& [name, f] : failed_) out.push_back(DescribeFailed(f));
  return out;
}

absl::Status ExportManager::PersistPut(const ExportConfig& config) {
  return store_ == nullptr ? absl::OkStatus() : Saving(store_->Put(config));
}

absl::Status ExportManager::PersistDelete(const std::string& name) {
  return store_ == nullptr ? absl::OkStatus() : Saving(store_->Delete(name));
}

absl::Status ExportManager::CheckTls(TlsMode mode) const {
  if (mode == TlsMode::kOff || options_.tls_available) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "tls=", ToAbsl(NameOf(mode)),
      " needs nbdmgrd started with --tls-cert/--tls-key or --tls-psk"));
}

absl::StatusOr<ExportInfo> ExportManager::CreateExport(ExportConfig config,
                                                       bool take_over) {
  if (absl::Status st = ValidateExportConfig(config); !st.ok()) return st;
  if (absl::Status st = CheckTls(config.tls); !st.ok()) return st;
  {
    MutexLock lock(&mu_);
    if (registry_.Find(config.name) != nullptr ||
        failed_.contains(config.name) || pending_.contains(config.name)) {
      return absl::AlreadyExistsError(
          absl::StrCat("export \"", config.name, "\" already exists"));
    }
    if (absl::Status st = CheckQosGroup(config.qos_group); !st.ok()) {
      return st;
    }
    const size_t count =
        registry_.List().size() + failed_.size() + pending_.size();
    if (count >= options_.max_exports) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the daemon holds ", count,
                       " exports, the most --max-exports allows"));
    }
    pending_.insert(config.name);  // the name is taken while we open
  }
  // A new export starts without bitmaps, whatever an old one of its name
  // left behind.
  if (bitmap_store_ != nullptr) {
    absl::Status st;
    {
      MutexLock lock(&mu_bitmaps_);
      st = bitmap_store_->Remove(config.name);
    }
    if (!st.ok()) {
      MutexLock lock(&mu_);
      pending_.erase(config.name);
      return st;
    }
  }
  // File exports are opened one at a time (and their undo done before the
  // next opens), so an undo never removes a file another create opened.
  std::unique_lock<std::mutex> opening(open_mu_, std::defer_lock);
  if (config.backend == BackendKind::kFile) opening.lock();
  absl::StatusOr<std::shared_ptr<Export>> e =
      OpenWithin(config, true, take_over);
  MutexLock lock(&mu_);
  pending_.erase(config.name);
  if (!e.ok()) return e.status();
  // The group may have been deleted while the backend opened.
  if (absl::Status st = AttachQosGroup(**e, config.qos_group); !st.ok()) {
    lock.Release();
    (*e)->RemoveCreatedFile();
    return st;
  }
  if (absl::Status st = PersistPut((*e)->current_config()); !st.ok()) {
    lock.Release();
    (*e)->RemoveCreatedFile();  // nothing may remain of a failed call
    return st;
  }
  if (absl::Status st = registry_.Add(*e); !st.ok()) return st;
  persistent_.insert(config.name);
  lock.Release();
  spdlog::info("created export \"{}\" ({} {})", config.name,
               NameOf(config.backend), (*e)->size());
  return Describe(**e);
}

absl::StatusOr<std::shared_ptr<Export>> ExportManager::FindExport(
    const std::string& name) const {
  std::shared_ptr<Export> e = name.empty() ? nullptr : registry_.Find(name);
  if (e == nullptr) {
    return absl::NotFoundError(absl::StrCat("export \"", name, "\" not found"));
  }
  return e;
}

absl::StatusOr<std::shared_ptr<Export>> ExportManager::FindServed(
    const std::string& name) const {
  {
    MutexLock lock(&mu_);
    if (failed_.contains(name)) {
      return absl::FailedPreconditionError(
          absl::StrCat("export \"", name,
                       "\" is FAILED (not served): fix it and retry it first"));
    }
  }
  absl::StatusOr<std::shared_ptr<Export>> e = FindExport(name);
  if (!e.ok()) return e.status();
  if ((*e)->draining()) {
    return absl::FailedPreconditionError(
        absl::StrCat("export \"", name, "\" is being deleted"));
  }
  return e;
}

void ExportManager::RestoreBitmaps(Export& e) {
  if (bitmap_store_ == nullptr) return;
  MutexLock lock(&mu_bitmaps_);
  absl::StatusOr<std::vector<BitmapRecord>> records =
      bitmap_store_->Load(e.name(), e.size(), e.backend().DurableIdentity());
  if (!records.ok()) {
    spdlog::error(
        "export \"{}\": its dirty bitmaps cannot be read and are dropped "
        "(the file is kept as {}.corrupt; take full backups): {}",
        e.name(), bitmap_store_->PathOf(e.name()), records.status().message());
    (void)bitmap_store_->SetAside(e.name());
    return;
  }
  if (records->empty()) return;
  e.bitmaps().Restore(std::move(*records));
  for (const BitmapInfo& b : e.bitmaps().List()) {
    if (b.consistent) {
      spdlog::info("export \"{}\": bitmap \"{}\" restored ({} bytes dirty)",
                   e.name(), b.name, b.dirty_bytes);
    } else {
      spdlog::warn(
          "export \"{}\": bitmap \"{}\" is inconsistent ({}): it is not "
          "offered to clients; clear it (or checkpoint it) first, then take "
          "a full backup",
          e.name(), b.name, b.inconsistent_reason);
    }
  }
  // In use from now on: a crash before the next clean stop must leave them
  // inconsistent, never trusted.
  absl::Status st = bitmap_store_->SaveInUse(e.name(), e.bitmaps().Records());
  if (!st.ok()) {
    absl::Status rm = bitmap_store_->Remove(e.name());
    spdlog::error(
        "export \"{}\": cannot mark its bitmaps in use ({}); {}", e.name(),
        st.message(),
        rm.ok() ? std::string("their file was removed: a crash before a clean "
                              "stop loses them")
                : absl::StrCat("nor remove their file (", rm.message(),
                               "): a crash before a clean stop would bring "
                               "back stale bits"));
  }
}

void ExportManager::ForgetBitmaps(const std::string& name) {
  if (bitmap_store_ == nullptr) return;
  // After a bitmap call that found the export before it was removed.
  MutexLock lock(&mu_bitmaps_);
  if (absl::Status st = bitmap_store_->Remove(name); !st.ok()) {
    spdlog::error("export \"{}\": cannot remove its saved bitmaps: {}", name,
                  st.message());
  }
}

absl::Status ExportManager::SaveBitmapsAtStop(const Export& e) {
  if (bitmap_store_ == nullptr) return absl::OkStatus();
  std::vector<BitmapRecord> records = e.bitmaps().Records();
  if (records.empty()) return absl::OkStatus();
  return bitmap_store_->SaveClean(e.name(), records,
                                  e.backend().DurableIdentity());
}

BitmapSet::Persist ExportManager::BitmapSaver(const Export& e) {
  if (bitmap_store_ == nullptr) return {};
  return [this, name = e.name()](const std::vector<BitmapRecord>& records) {
    return Saving(bitmap_store_->SaveInUse(name, records));
  };
}

absl::StatusOr<BitmapInfo> ExportManager::AddBitmap(const std::string& name,
                                                    const std::string& bitmap,
                                                    uint64_t granularity) {
  MutexLock lock(&mu_bitmaps_);
  absl::StatusOr<std::shared_ptr<Export>> e = FindServed(name);
  if (!e.ok()) return e.status();
  absl::StatusOr<BitmapInfo> info =
      (*e)->bitmaps().Add(bitmap, granularity, BitmapSaver(**e));
  if (!info.ok()) return info.status();
  spdlog::info("export \"{}\": added bitmap \"{}\" (granularity {})", name,
               bitmap, info->granularity);
  return info;
}

absl::StatusOr<std::vector<BitmapInfo>> ExportManager::ListBitmaps(
    const std::string& name) const {
  absl::StatusOr<std::shared_ptr<Export>> e = FindServed(name);
  if (!e.ok()) return e.status();
  return (*e)->bitmaps().List();
}

absl::StatusOr<BitmapInfo> ExportManager::ClearBitmap(
    const std::string& name, const std::string& bitmap) {
  MutexLock lock(&mu_bitmaps_);
  absl::StatusOr<std::shared_ptr<Export>> e = FindServed(name);
  if (!e.ok()) return e.status();
  absl::StatusOr<BitmapInfo> info =
      (*e)->bitmaps().Clear(bitmap, BitmapSaver(**e));
  if (!info.ok()) return info.status();
  spdlog::info("export \"{}\": cleared bitmap \"{}\"", name, bitmap);
  return info;
}

absl::Status ExportManager::RemoveBitmap(const std::string& name,
                                         const std::string& bitmap) {
  MutexLock lock(&mu_bitmaps_);
  absl::StatusOr<std::shared_ptr<Export>> e = FindServed(name);
  if (!e.ok()) return e.status();
  if (absl::Status st = (*e)->bitmaps().Remove(bitmap, BitmapSaver(**e));
      !st.ok()) {
    return st;
  }
  spdlog::info("export \"{}\": removed bitmap \"{}\"", name, bitmap);
  return absl::OkStatus();
}

absl::StatusOr<std::pair<BitmapInfo, BitmapInfo>>
ExportManager::CheckpointBitmap(const std::string& name,
                                const std::string& frozen,
                                const std::string& started,
                                uint64_t granularity) {
  MutexLock lock(&mu_bitmaps_);
  absl::StatusOr<std::shared_ptr<Export>> e = FindServed(name);
  if (!e.ok()) return e.status();
  auto r = (*e)->bitmaps().Checkpoint(frozen, started, granularity,
                                      BitmapSaver(**e));
  if (!r.ok()) return r.status();
  spdlog::info("export \"{}\": checkpoint froze bitmap \"{}\", started \"{}\"",
               name, frozen, started);
  return r;
}

absl::StatusOr<std::shared_ptr<Export>> ExportManager::FindOverlay(
    const std::string& name) const {
  absl::StatusOr<std::shared_ptr<Export>> e = FindServed(name);
  if (!e.ok()) return e.status();
  if ((*e)->overlay() == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("export \"", name, "\" is not an overlay"));
  }
  return e;
}

absl::StatusOr<ExportInfo> ExportManager::ResetOverlay(
    const std::string& name) {
  MutexLock lock(&mu_overlays_);
  absl::StatusOr<std::shared_ptr<Export>> e = FindOverlay(name);
  if (!e.ok()) return e.status();
  if ((*e)->clients() > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("overlay \"", name, "\" has ", (*e)->clients(),
                     " client(s) connected: its disk would change under them; "
                     "disconnect them first"));
  }
  if (absl::Status st =
          (*e)->overlay()->Reset([&](uint64_t offset, uint64_t length) {
            (*e)->bitmaps().Mark(offset, length);
          });
      !st.ok()) {
    return st;
  }
  spdlog::info("overlay \"{}\": reset (reads its base everywhere)", name);
  return Describe(**e);
}

absl::StatusOr<ExportInfo> ExportManager::CommitOverlay(
    const std::string& name) {
  MutexLock lock(&mu_overlays_);
  absl::StatusOr<std::shared_ptr<Export>> e = FindOverlay(name);
  if (!e.ok()) return e.status();
  const std::shared_ptr<Export>& base = (*e)->base_export();
  if (base == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "overlay \"", name, "\" has a file as its base (", (*e)->config().base,
        "), opened read-only: commit needs a base export"));
  }
  if (base->read_only()) {
    return absl::FailedPreconditionError(
        absl::StrCat("base export \"", base->name(), "\" is read-only"));
  }
  if (base->clients() > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "base export \"", base->name(), "\" has ", base->clients(),
        " client(s) connected: it would change under them; disconnect them "
        "first"));
  }
  for (const auto& other : registry_.List()) {
    if (other.get() != e->get() && other->base_export() == base &&
        other->clients() > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("overlay \"", other->name(), "\" of the same base has ",
                       other->clients(),
                       " client(s) connected: the base would change "
                       "under them; disconnect them first"));
    }
  }
  const OverlayStats before = (*e)->overlay()->stats();
  // The base changes, and so does every other overlay of it where it
  // reads the base.
  std::vector<std::shared_ptr<Export>> affected = {base};
  for (const auto& other : registry_.List()) {
    if (other.get() != e->get() && other->base_export() == base) {
      affected.push_back(other);
    }
  }
  if (absl::Status st =
          (*e)->overlay()->Commit([&](uint64_t offset, uint64_t length) {
            for (const auto& a : affected) a->bitmaps().Mark(offset, length);
          });
      !st.ok()) {
    return st;
  }
  spdlog::info("overlay \"{}\": committed {} bytes into \"{}\"", name,
               before.allocated_bytes + before.zero_bytes, base->name());
  return Describe(**e);
}

absl::StatusOr<std::vector<ExportInfo>> ExportManager::ListOverlays(
    const std::string& base) const {
  absl::StatusOr<std::shared_ptr<Export>> b = FindExport(base);
  if (!b.ok()) return b.status();
  std::vector<ExportInfo> out;
  for (const auto& e : registry_.List()) {
    if (e->base_export() == *b) out.push_back(Describe(*e));
  }
  std::sort(out.begin(), out.end(),
            [](const ExportInfo& x, const ExportInfo& y) {
              return x.config.name < y.config.name;
            });
  return out;
}

absl::StatusOr<ExportInfo> ExportManager::GetExport(
    const std::string& name) const {
  {
    MutexLock lock(&mu_);
    if (auto it = failed_.find(name); it != failed_.end()) {
      return DescribeFailed(it->second);
    }
  }
  absl::StatusOr<std::shared_ptr<Export>> e = FindExport(name);
  if (!e.ok()) return e.status();
  return Describe(**e);
}

absl::StatusOr<ExportManager::Page> ExportManager::ListExports(
    int page_size, const std::string& page_token) const {
  if (page_size < 0) {
    return absl::InvalidArgumentError("page_size must not be negative");
  }
  if (page_size == 0) page_size = 100;
  page_size = std::min(page_size, 1000);
  if (!page_token.empty() && !ValidateExportName(page_token).ok()) {
    return absl::InvalidArgumentError("invalid page_token");
  }
  // Served and FAILED exports, merged by name.
  std::map<std::string, std::shared_ptr<Export>> served;
  for (auto& e : registry_.List()) served.emplace(e->name(), e);
  std::map<std::string, ExportInfo> failed;
  {
    MutexLock lock(&mu_);
    for (const auto& [name, f] : failed_) {
      failed.emplace(name, DescribeFailed(f));
    }
  }
  std::set<std::string> names;
  for (const auto& [name, e] : served) names.insert(name);
  for (const auto& [name, f] : failed) names.insert(name);
  Page page;
  for (auto it = names.upper_bound(page_token); it != names.end(); ++it) {
    if (static_cast<int>(page.exports.size()) == page_size) {
      page.next_page_token = page.exports.back().config.name;
      break;
    }
    if (auto f = failed.find(*it); f != failed.end()) {
      page.exports.push_back(f->second);
    } else {
      page.exports.push_back(Describe(*served.at(*it)));
    }
  }
  return page;
}

absl::StatusOr<ExportInfo> ExportManager::UpdateExport(
    const std::string& name, const ExportUpdate& update) {
  MutexLock lock(&mu_);
  if (pending_.contains(name)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "export \"", name, "\" is being created or retried; try again"));
  }
  if (auto it = failed_.find(name); it != failed_.end()) {
    ExportConfig next = Updated(it->second.config, update);
    if (absl::Status st = ValidateExportConfig(next); !st.ok()) return st;
    if (absl::Status st = CheckQosGroup(next.qos_group); !st.ok()) return st;
    if (update.tls) {
      if (absl::Status st = CheckTls(*update.tls); !st.ok()) return st;
    }
    if (update.retry) {
      // The fields are saved only if the export then serves: a retry that
      // fails changes nothing.
      pending_.insert(name);
      lock.Release();
      return Retry(name, std::move(next), update.changes_fields());
    }
    if (update.changes_fields()) {
      if (absl::Status st = PersistPut(next); !st.ok()) return st;
      it->second.config = std::move(next);
    }
    return DescribeFailed(it->second);
  }
  absl::StatusOr<std::shared_ptr<Export>> found = FindExport(name);
  if (!found.ok()) return found.status();
  std::shared_ptr<Export> e = *found;
  if (e->draining()) {
    return absl::FailedPreconditionError(
        absl::StrCat("export \"", name, "\" is being deleted"));
  }
  ExportConfig next = Updated(e->current_config(), update);
  if (absl::Status st = ValidateExportConfig(next); !st.ok()) return st;
  if (absl::Status st = CheckQosGroup(next.qos_group); !st.ok()) return st;
  if (update.tls) {
    if (absl::Status st = CheckTls(*update.tls); !st.ok()) return st;
  }
  // Saved first: what the call answers, what is live and what a restart
  // brings back agree.
  if (persistent_.contains(name)) {
    if (absl::Status st = PersistPut(next); !st.ok()) return st;
  }
  if (update.description) e->set_description(next.description);
  if (update.tls) e->set_tls_mode(next.tls);
  if (update.max_clients) e->set_max_clients(next.max_clients);
  if (update.stall_timeout) e->set_stall_timeout(next.stall_timeout);
  if (!update.qos.empty()) e->set_qos_limits(next.qos);
  if (update.qos_group) {
    // Checked above, under the same lock: cannot fail.
    if (absl::Status st = AttachQosGroup(*e, next.qos_group); !st.ok()) {
      return st;
    }
  }
  e->buffers().Update(next.buffers);
  lock.Release();
  if (update.changes_fields()) {
    spdlog::info("updated export \"{}\": buffers {}, cap {}", name,
                 NameOf(next.buffers.strategy), next.buffers.memory_cap_bytes);
  }
  return Describe(*e);
}

absl::StatusOr<ExportInfo> ExportManager::Retry(const std::string& name,
                                                ExportConfig config,
                                                bool save) {
  std::unique_lock<std::mutex> opening(open_mu_, std::defer_lock);
  if (config.backend == BackendKind::kFile) opening.lock();
  absl::StatusOr<std::shared_ptr<Export>> e = OpenWithin(config, false, false);
  if (e.ok()) RestoreBitmaps(**e);
  MutexLock lock(&mu_);
  pending_.erase(name);
  auto it = failed_.find(name);  // still there: nothing else touches a
                                 // pending name
  if (e.ok()) {
    if (absl::Status st = AttachQosGroup(**e, config.qos_group); !st.ok()) {
      e = st;
    }
  }
  if (!e.ok()) {
    it->second.reason = std::string(e.status().message());
    return absl::Status(e.status().code(),
                        absl::StrCat("export \"", name, "\" is still FAILED: ",
                                     e.status().message()));
  }
  if (save) {
    if (absl::Status st = PersistPut(config); !st.ok()) return st;
  }
  if (absl::Status st = registry_.Add(*e); !st.ok()) return st;
  failed_.erase(it);
  persistent_.insert(name);
  lock.Release();
  spdlog::info("export \"{}\" is served again", name);
  return Describe(**e);
}

absl::StatusOr<int> ExportManager::DeleteExport(
    const std::string& name, DeleteMode mode,
    std::chrono::milliseconds timeout) {
  std::shared_ptr<Export> e;
  {
    MutexLock lock(&mu_);
    if (pending_.contains(name)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "export \"", name, "\" is being created or retried; try again"));
    }
    if (failed_.contains(name)) {
      if (absl::Status st = PersistDelete(name); !st.ok()) return st;
      failed_.erase(name);
      lock.Release();
      ForgetBitmaps(name);  // takes mu_bitmaps_: never inside mu_
      spdlog::info("deleted FAILED export \"{}\"", name);
      return 0;
    }
    absl::StatusOr<std::shared_ptr<Export>> found = FindExport(name);
    if (!found.ok()) return found.status();
    e = *found;
    if (e->draining()) {
      return absl::FailedPreconditionError(
          absl::StrCat("export \"", name, "\" is already being deleted"));
    }
    // Served overlays hold their base; FAILED ones would need it to be
    // retried.
    int overlays = e->overlays();
    for (const auto& [n, f] : failed_) overlays += f.config.base == name;
    if (overlays > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("export \"", name, "\" is the base of ", overlays,
                       " overlay(s); remove them (or commit one) first"));
    }
    if (mode == DeleteMode::kSafe && e->clients() > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("export \"", name, "\" has ", e->clients(),
                       " connected client(s); use mode DRAIN or HARD"));
    }
    // Saved before anything changes: a failure leaves the export as it was.
    if (persistent_.contains(name)) {
      if (absl::Status st = PersistDelete(name); !st.ok()) return st;
      persistent_.erase(name);
    }
    e->set_draining();  // from here on, no new client gets in
  }
  int closed = e->clients();
  if (closed > 0 && sessions_ != nullptr) {
    if (mode == DeleteMode::kHard) (void)e->backend().Flush();
    sessions_->StopSessionsOf(*e, mode == DeleteMode::kHard);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (e->clients() > 0 && std::chrono::steady_clock::now() < deadline &&
           !aborting_.load(std::memory_order_acquire)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (e->clients() > 0) {
      spdlog::warn(
          "export \"{}\": {} client(s) still busy at the deadline; closing",
          name, e->clients());
      sessions_->StopSessionsOf(*e, /*hard=*/true);
      auto hard_deadline =
          std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (e->clients() > 0 &&
             std::chrono::steady_clock::now() < hard_deadline &&
             !aborting_.load(std::memory_order_acquire)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
  }
  absl::Status flushed =
      e->read_only() ? absl::OkStatus() : e->backend().Flush();
  // While the name is still taken: a new export of that name cannot have
  // saved bitmaps yet for this to remove.
  ForgetBitmaps(name);
  {
    MutexLock lock(&mu_);
    (void)registry_.Remove(name);
  }
  if (!flushed.ok()) {
    spdlog::error("export \"{}\": final flush failed: {}", name,
                  flushed.message());
  }
  spdlog::info("deleted export \"{}\" ({} connection(s) closed)", name, closed);
  return closed;
}

absl::Status ExportManager::LoadQosGroups() {
  for (const QosGroupConfig& g : options_.qos_groups) {
    if (absl::Status st = ValidateQosGroupConfig(g); !st.ok()) return st;
    if (qos_groups_.contains(g.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("QoS group \"", g.name, "\" is given twice"));
    }
    qos_groups_[g.name] = {std::make_shared<QosGroup>(g.name, g.limits), false};
  }
  if (qos_store_ == nullptr) return absl::OkStatus();
  absl::StatusOr<std::vector<QosGroupConfig>> saved = qos_store_->Load();
  if (!saved.ok()) return saved.status();
  if (saved->size() + qos_groups_.size() > kMaxQosGroups) {
    spdlog::warn(
        "{} QoS groups saved and given, more than {}: all are kept, but no "
        "more can be created",
        saved->size() + qos_groups_.size(), kMaxQosGroups);
  }
  for (const QosGroupConfig& g : *saved) {
    if (qos_groups_.contains(g.name)) {
      return absl::FailedPreconditionError(absl::StrCat(
          qos_store_->path(), ": QoS group \"", g.name,
          "\" is also given on the command line; remove one of them"));
    }
    qos_groups_[g.name] = {std::make_shared<QosGroup>(g.name, g.limits), true};
  }
  return absl::OkStatus();
}

absl::Status ExportManager::CheckQosGroup(const std::string& group) const {
  if (group.empty() || qos_groups_.contains(group)) return absl::OkStatus();
  return absl::NotFoundError(
      absl::StrCat("QoS group \"", group, "\" does not exist"));
}

absl::Status ExportManager::AttachQosGroup(Export& e,
                                           const std::string& group) {
  if (group.empty()) {
    e.set_qos_group(nullptr);
    return absl::OkStatus();
  }
  auto it = qos_groups_.find(group);
  if (it == qos_groups_.end()) return CheckQosGroup(group);
  e.set_qos_group(it->second.group);
  return absl::OkStatus();
}

absl::Status ExportManager::PersistQosGroups(
    const std::string& name, const std::optional<QosGroupConfig>& config) {
  if (qos_store_ == nullptr) return absl::OkStatus();
  std::vector<QosGroupConfig> saved;
  for (const auto& [n, entry] : qos_groups_) {
    if (n == name || !entry.persistent) continue;
    saved.push_back({n, entry.group->limits()});
  }
  if (config) saved.push_back(*config);
  std::sort(saved.begin(), saved.end(),
            [](const QosGroupConfig& a, const QosGroupConfig& b) {
              return a.name < b.name;
            });
  return Saving(qos_store_->Save(saved));
}

std::map<std::string, std::vector<std::string>> ExportManager::QosGroupMembers()
    const {
  std::map<std::string, std::vector<std::string>> out;
  for (const auto& e : registry_.List()) {
    std::string group = e->current_config().qos_group;
    if (!group.empty()) out[group].push_back(e->name());
  }
  for (const auto& [name, f] : failed_) {
    if (!f.config.qos_group.empty()) out[f.config.qos_group].push_back(name);
  }
  for (auto& [group, names] : out) std::sort(names.begin(), names.end());
  return out;
}

QosGroupInfo ExportManager::DescribeQosGroup(
    const QosGroupEntry& entry,
    const std::map<std::string, std::vector<std::string>>& members) const {
  QosGroupInfo info;
  info.name = entry.group->name();
  info.limits = entry.group->limits();
  if (auto it = members.find(info.name); it != members.end()) {
    info.exports = it->second;
  }
  info.served_members = entry.group->members();
  info.persistent = entry.persistent;
  info.stats = entry.group->throttle().stats();
  return info;
}

absl::StatusOr<QosGroupInfo> ExportManager::CreateQosGroup(
    const QosGroupConfig& group) {
  if (absl::Status st = ValidateQosGroupConfig(group); !st.ok()) return st;
  MutexLock lock(&mu_);
  if (qos_groups_.contains(group.name)) {
    return absl::AlreadyExistsError(
        absl::StrCat("QoS group \"", group.name, "\" already exists"));
  }
  if (qos_groups_.size() >= kMaxQosGroups) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the daemon holds ", qos_groups_.size(),
                     " QoS groups, the most it allows"));
  }
  if (absl::Status st = PersistQosGroups(group.name, group); !st.ok()) {
    return st;
  }
  QosGroupEntry& entry = qos_groups_[group.name];
  entry = {std::make_shared<QosGroup>(group.name, group.limits), true};
  spdlog::info("created QoS group \"{}\"", group.name);
  return DescribeQosGroup(entry, QosGroupMembers());
}

absl::StatusOr<QosGroupInfo> ExportManager::GetQosGroup(
    const std::string& name) const {
  MutexLock lock(&mu_);
  auto it = qos_groups_.find(name);
  if (it == qos_groups_.end()) return CheckQosGroup(name);
  return DescribeQosGroup(it->second, QosGroupMembers());
}

std::vector<QosGroupInfo> ExportManager::ListQosGroups() const {
  MutexLock lock(&mu_);
  std::vector<QosGroupInfo> out;
  const std::map<std::string, std::vector<std::string>> members =
      QosGroupMembers();
  for (const auto& [name, entry] : qos_groups_) {
    out.push_back(DescribeQosGroup(entry, members));
  }
  return out;
}

absl::StatusOr<QosGroupInfo> ExportManager::UpdateQosGroup(
    const std::string& name, const QosLimitsUpdate& update) {
  MutexLock lock(&mu_);
  auto it = qos_groups_.find(name);
  if (it == qos_groups_.end()) return CheckQosGroup(name);
  QosGroupConfig next{name, update.AppliedTo(it->second.group->limits())};
  if (absl::Status st = ValidateQosGroupConfig(next); !st.ok()) return st;
  if (it->second.persistent) {
    if (absl::Status st = PersistQosGroups(name, next); !st.ok()) return st;
  }
  it->second.group->SetLimits(next.limits);
  spdlog::info("updated QoS group \"{}\"", name);
  return DescribeQosGroup(it->second, QosGroupMembers());
}

absl::Status ExportManager::DeleteQosGroup(const std::string& name) {
  MutexLock lock(&mu_);
  auto it = qos_groups_.find(name);
  if (it == qos_groups_.end()) return CheckQosGroup(name);
  const auto members = QosGroupMembers();
  if (auto m = members.find(name); m != members.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("QoS group \"", name, "\" has exports: ",
                     absl::StrJoin(m->second, ", "), " (move them out first)"));
  }
  // A command-line export configured with the group would not start again
  // without it, even if it was moved out since (that move is not saved).
  for (const auto& e : registry_.List()) {
    if (!persistent_.contains(e->name()) && e->config().qos_group == name) {
      return absl::FailedPreconditionError(absl::StrCat(
          "QoS group \"", name, "\" is named by export ", e->name(),
          " on nbdmgrd's command line or config file; it would not start "
          "again without the group"));
    }
  }
  // An export being created may name it: it fails when it attaches.
  if (it->second.persistent) {
    if (absl::Status st = PersistQosGroups(name, std::nullopt); !st.ok()) {
      return st;
    }
  }
  // Requests still waiting there (their export left it while they
  // waited) go on.
  it->second.group->SetLimits({});
  qos_groups_.erase(it);
  spdlog::info("deleted QoS group \"{}\"", name);
  return absl::OkStatus();
}

}  // namespace nbdmgr
