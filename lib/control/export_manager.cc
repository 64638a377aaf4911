#include "lib/control/export_manager.h"

#include <limits.h>
#include <stdlib.h>

#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "lib/util/strings.h"
#include "spdlog/spdlog.h"

namespace nbdmgr {
namespace {

// realpath() of `p`, or of its parent joined with its last component when
// `p` does not exist yet. Empty on failure.
std::string Resolve(const std::string& p) {
  char buf[PATH_MAX];
  if (::realpath(p.c_str(), buf) != nullptr) return buf;
  std::filesystem::path path(p);
  if (::realpath(path.parent_path().c_str(), buf) == nullptr) return "";
  return (std::filesystem::path(buf) / path.filename()).string();
}

bool IsUnder(const std::string& path, const std::string& dir) {
  if (dir == "/") return true;
  return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
         path[dir.size()] == '/';
}

}  // namespace

absl::StatusOr<std::unique_ptr<ExportManager>> ExportManager::Create(
    ExportManagerOptions options, ExportRegistry& registry,
    BufferSystem& buffers) {
  std::unique_ptr<ExportManager> m(
      new ExportManager(std::move(options), registry, buffers));
  if (m->options_.state_dir.empty()) return m;
  absl::StatusOr<std::unique_ptr<StateStore>> store =
      StateStore::Open(m->options_.state_dir);
  if (!store.ok()) return store.status();
  m->store_ = std::move(*store);
  absl::StatusOr<std::vector<ExportConfig>> saved = m->store_->Load();
  if (!saved.ok()) return saved.status();
  std::lock_guard lock(m->mu_);
  for (const ExportConfig& c : *saved) {
    if (registry.Find(c.name) != nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          m->store_->path(), ": export \"", c.name,
          "\" is also given on the command line; remove one of them"));
    }
    if (absl::Status st = m->CheckTls(c.tls); !st.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          m->store_->path(), ": export \"", c.name, "\": ", st.message()));
    }
    absl::StatusOr<std::shared_ptr<Export>> e = Export::Create(c, buffers);
    if (!e.ok()) {
      return absl::Status(e.status().code(),
                          absl::StrCat(m->store_->path(), ": export \"", c.name,
                                       "\": ", e.status().message()));
    }
    if (absl::Status st = registry.Add(*e); !st.ok()) return st;
    m->persistent_.insert(c.name);
  }
  return m;
}

ExportManager::ExportManager(ExportManagerOptions options,
                             ExportRegistry& registry, BufferSystem& buffers)
    : options_(std::move(options)), registry_(registry), buffers_(buffers) {}

absl::Status ExportManager::CheckPath(const std::string& path) const {
  if (options_.allow_paths.empty()) {
    return absl::PermissionDeniedError(
        "file exports over the API need the daemon to be started with "
        "--allow-path DIR");
  }
  for (const auto& part : std::filesystem::path(path)) {
    if (part == "..") {
      return absl::PermissionDeniedError(
          absl::StrCat("path ", path, " contains \"..\""));
    }
  }
  std::string resolved = Resolve(path);
  if (resolved.empty()) {
    return absl::NotFoundError(
        absl::StrCat("directory of ", path, " does not exist"));
  }
  for (const std::string& dir : options_.allow_paths) {
    std::string allowed = Resolve(dir);
    if (!allowed.empty() && IsUnder(resolved, allowed)) return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat(
      "path ", path,
      resolved != path ? absl::StrCat(" (resolves to ", resolved, ")") : "",
      " is outside the allowed directories"));
}

ExportInfo ExportManager::Describe(const Export& e) const {
  ExportInfo info;
  info.config = e.current_config();
  info.size = e.size();
  info.block_sizes = e.block_sizes();
  info.multi_conn = e.caps().can_multi_conn;
  info.clients = e.clients();
  info.created = e.created();
  info.draining = e.draining();
  {
    std::lock_guard lock(mu_);
    info.persistent = persistent_.contains(e.name());
  }
  return info;
}

namespace {

absl::Status Saving(absl::Status st) {
  if (st.ok()) return st;
  return absl::Status(st.code(), absl::StrCat("saving state: ", st.message()));
}

}  // namespace

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

absl::StatusOr<ExportInfo> ExportManager::CreateExport(ExportConfig config) {
  if (absl::Status st = ValidateExportConfig(config); !st.ok()) return st;
  if (absl::Status st = CheckTls(config.tls); !st.ok()) return st;
  if (config.backend == BackendKind::kFile) {
    if (absl::Status st = CheckPath(config.path); !st.ok()) return st;
  }
  std::shared_ptr<Export> e;
  {
    std::lock_guard lock(mu_);
    if (registry_.Find(config.name) != nullptr) {
      return absl::AlreadyExistsError(
          absl::StrCat("export \"", config.name, "\" already exists"));
    }
    absl::StatusOr<std::shared_ptr<Export>> created =
        Export::Create(config, buffers_);
    if (!created.ok()) return created.status();
    e = *created;
    if (absl::Status st = registry_.Add(e); !st.ok()) return st;
    persistent_.insert(config.name);
    if (absl::Status st = PersistPut(e->current_config()); !st.ok()) {
      // Not durable: undo, so the API never reports an export that would
      // vanish on restart.
      persistent_.erase(config.name);
      (void)registry_.Remove(config.name);
      return st;
    }
  }
  spdlog::info("created export \"{}\" ({} {})", config.name,
               NameOf(config.backend), e->size());
  return Describe(*e);
}

absl::StatusOr<std::shared_ptr<Export>> ExportManager::FindExport(
    const std::string& name) const {
  std::shared_ptr<Export> e = name.empty() ? nullptr : registry_.Find(name);
  if (e == nullptr) {
    return absl::NotFoundError(absl::StrCat("export \"", name, "\" not found"));
  }
  return e;
}

absl::StatusOr<ExportInfo> ExportManager::GetExport(
    const std::string& name) const {
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
  Page page;
  for (const auto& e : registry_.List()) {
    if (!page_token.empty() && e->name() <= page_token) continue;
    if (static_cast<int>(page.exports.size()) == page_size) {
      page.next_page_token = page.exports.back().config.name;
      break;
    }
    page.exports.push_back(Describe(*e));
  }
  return page;
}

absl::StatusOr<ExportInfo> ExportManager::UpdateExport(
    const std::string& name, const ExportUpdate& update) {
  std::shared_ptr<Export> e;
  {
    std::lock_guard lock(mu_);
    absl::StatusOr<std::shared_ptr<Export>> found = FindExport(name);
    if (!found.ok()) return found.status();
    e = *found;
    if (update.description && update.description->size() > 4096) {
      return absl::InvalidArgumentError("description longer than 4096 bytes");
    }
    BufferSettings settings = e->buffers().settings();
    if (update.buffer_strategy) settings.strategy = *update.buffer_strategy;
    if (update.memory_cap_bytes)
      settings.memory_cap_bytes = *update.memory_cap_bytes;
    if (update.pool_idle_release) {
      if (update.pool_idle_release->count() < 0) {
        return absl::InvalidArgumentError(
            "pool_idle_release must not be negative");
      }
      settings.pool_idle_release = *update.pool_idle_release;
    }
    if (update.tls) {
      if (absl::Status st = CheckTls(*update.tls); !st.ok()) return st;
    }
    if (update.stall_timeout && *update.stall_timeout &&
        (**update.stall_timeout < std::chrono::milliseconds(0) ||
         **update.stall_timeout > kMaxStallTimeout)) {
      return absl::InvalidArgumentError(
          "stall_timeout must be between 0 and 24h");
    }
    if (update.description) e->set_description(*update.description);
    if (update.tls) e->set_tls_mode(*update.tls);
    if (update.max_clients) e->set_max_clients(*update.max_clients);
    if (update.stall_timeout) e->set_stall_timeout(*update.stall_timeout);
    e->buffers().Update(settings);
    if (persistent_.contains(name)) {
      if (absl::Status st = PersistPut(e->current_config()); !st.ok()) {
        return st;
      }
    }
    spdlog::info("updated export \"{}\": buffers {}, cap {}", name,
                 NameOf(settings.strategy), settings.memory_cap_bytes);
  }
  return Describe(*e);  // takes mu_ itself
}

absl::StatusOr<int> ExportManager::DeleteExport(
    const std::string& name, DeleteMode mode,
    std::chrono::milliseconds timeout) {
  std::shared_ptr<Export> e;
  {
    std::lock_guard lock(mu_);
    absl::StatusOr<std::shared_ptr<Export>> found = FindExport(name);
    if (!found.ok()) return found.status();
    e = *found;
    if (e->draining()) {
      return absl::FailedPreconditionError(
          absl::StrCat("export \"", name, "\" is already being deleted"));
    }
    if (mode == DeleteMode::kSafe && e->clients() > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("export \"", name, "\" has ", e->clients(),
                       " connected client(s); use mode DRAIN or HARD"));
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
  std::lock_guard lock(mu_);
  (void)registry_.Remove(name);
  bool was_persistent = persistent_.erase(name) > 0;
  if (was_persistent) {
    if (absl::Status st = PersistDelete(name); !st.ok()) {
      return st;
    }
  }
  if (!flushed.ok()) {
    spdlog::error("export \"{}\": final flush failed: {}", name,
                  flushed.message());
  }
  spdlog::info("deleted export \"{}\" ({} connection(s) closed)", name, closed);
  return closed;
}

}  // namespace nbdmgr
