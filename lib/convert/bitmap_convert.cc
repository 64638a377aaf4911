#include "lib/convert/bitmap_convert.h"

#include <string_view>

#include "absl/strings/str_cat.h"
#include "lib/convert/proto_convert.h"
#include "lib/export/export_config.h"

namespace nbdmgr {

absl::StatusOr<BitmapRef> BitmapRefFromName(const std::string& name) {
  // Neither id may hold a '/', so the first "/bitmaps/" after "exports/"
  // is the separator; the ids' own checks refuse anything left over.
  constexpr std::string_view kPrefix = "exports/";
  constexpr std::string_view kCollection = "/bitmaps/";
  const size_t sep = name.find(kCollection);
  if (!name.starts_with(kPrefix) || sep == std::string::npos ||
      sep < kPrefix.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("resource name \"", name,
                     "\" must look like exports/{export}/bitmaps/{bitmap}"));
  }
  BitmapRef ref{name.substr(kPrefix.size(), sep - kPrefix.size()),
                name.substr(sep + kCollection.size())};
  if (absl::Status st = ValidateExportName(ref.export_id); !st.ok()) return st;
  if (absl::Status st = BitmapSet::ValidateName(ref.bitmap); !st.ok()) {
    return st;
  }
  return ref;
}

std::string BitmapResourceName(const std::string& export_id,
                               const std::string& bitmap) {
  return absl::StrCat(ExportResourceName(export_id), "/bitmaps/", bitmap);
}

v1::Bitmap BitmapInfoToProto(const std::string& export_id,
                             const BitmapInfo& info) {
  v1::Bitmap p;
  p.set_name(BitmapResourceName(export_id, info.name));
  p.set_granularity_bytes(info.granularity);
  p.set_active(info.active);
  p.set_consistent(info.consistent);
  p.set_inconsistent_reason(info.inconsistent_reason);
  p.set_dirty_bytes(info.dirty_bytes);
  p.set_memory_bytes(info.memory_bytes);
  return p;
}

}  // namespace nbdmgr
