#ifndef NBDMGR_LIB_CONVERT_BITMAP_CONVERT_H_
#define NBDMGR_LIB_CONVERT_BITMAP_CONVERT_H_

// BitmapInfo -> nbdmgr.v1.Bitmap, and the bitmaps' resource names.

#include <string>

#include "absl/status/statusor.h"
#include "lib/export/bitmap_set.h"
#include "nbdmgr/v1/bitmap.pb.h"

namespace nbdmgr {

// The two ids in "exports/{export}/bitmaps/{bitmap}".
struct BitmapRef {
  std::string export_id;
  std::string bitmap;
};

// "exports/{export}/bitmaps/{bitmap}" -> its ids. InvalidArgument for any
// other shape, or an id that breaks its naming rules (ValidateExportName,
// BitmapSet::ValidateName).
absl::StatusOr<BitmapRef> BitmapRefFromName(const std::string& resource_name);
std::string BitmapResourceName(const std::string& export_id,
                               const std::string& bitmap);

// `info`, a bitmap of export `export_id`, for the API.
v1::Bitmap BitmapInfoToProto(const std::string& export_id,
                             const BitmapInfo& info);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_CONVERT_BITMAP_CONVERT_H_
