#ifndef NBDMGR_LIB_EXPORT_EXPORT_REGISTRY_H_
#define NBDMGR_LIB_EXPORT_EXPORT_REGISTRY_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "lib/export/export.h"
#include "lib/util/mutex.h"

namespace nbdmgr {

// Thread-safe map from export name to Export. Lookups hand out shared_ptrs,
// so a removed export stays alive for the sessions still using it.
class ExportRegistry {
 public:
  // AlreadyExists if an export of that name is registered.
  absl::Status Add(std::shared_ptr<Export> e);
  // NotFound if no export of that name is registered.
  absl::StatusOr<std::shared_ptr<Export>> Remove(const std::string& name);

  // Looks up `name`; the empty name resolves to the default export (see
  // SetDefault). nullptr if not found.
  std::shared_ptr<Export> Find(const std::string& name) const;
  // Every export, sorted by name.
  std::vector<std::shared_ptr<Export>> List() const;

  // The export that clients asking for "" get. Empty means none.
  void SetDefault(std::string name);
  std::string default_name() const;

 private:
  mutable Mutex mu_;
  std::map<std::string, std::shared_ptr<Export>> exports_ ABSL_GUARDED_BY(mu_);
  std::string default_ ABSL_GUARDED_BY(mu_);
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_EXPORT_EXPORT_REGISTRY_H_
