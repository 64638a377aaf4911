#include "lib/export/export_registry.h"

#include "absl/strings/str_cat.h"
#include "lib/util/mutex.h"

namespace nbdmgr {

absl::Status ExportRegistry::Add(std::shared_ptr<Export> e) {
  MutexLock lock(&mu_);
  auto [it, inserted] = exports_.emplace(e->name(), e);
  if (!inserted) {
    return absl::AlreadyExistsError(
        absl::StrCat("export \"", e->name(), "\" already exists"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Export>> ExportRegistry::Remove(
    const std::string& name) {
  MutexLock lock(&mu_);
  auto it = exports_.find(name);
  if (it == exports_.end()) {
    return absl::NotFoundError(absl::StrCat("export \"", name, "\" not found"));
  }
  std::shared_ptr<Export> e = std::move(it->second);
  exports_.erase(it);
  return e;
}

std::shared_ptr<Export> ExportRegistry::Find(const std::string& name) const {
  MutexLock lock(&mu_);
  auto it = exports_.find(name.empty() ? default_ : name);
  return it == exports_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<Export>> ExportRegistry::List() const {
  MutexLock lock(&mu_);
  std::vector<std::shared_ptr<Export>> out;
  out.reserve(exports_.size());
  for (const auto& [name, e] : exports_) out.push_back(e);
  return out;
}

void ExportRegistry::SetDefault(std::string name) {
  MutexLock lock(&mu_);
  default_ = std::move(name);
}

std::string ExportRegistry::default_name() const {
  MutexLock lock(&mu_);
  return default_;
}

}  // namespace nbdmgr
