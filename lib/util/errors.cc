#include "lib/util/errors.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "lib/util/strings.h"

namespace nbdmgr {

absl::Status ErrnoStatus(int error_number, std::string_view what) {
  return absl::Status(
      absl::ErrnoToStatusCode(error_number),
      absl::StrCat(ToAbsl(what), ": ", std::strerror(error_number)));
}

}  // namespace nbdmgr
