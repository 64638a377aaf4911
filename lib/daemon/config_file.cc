#include "lib/daemon/config_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace nbdmgr {
namespace {

// Collects the first syntax error with its position.
class Errors final : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (first_.empty()) {
      first_ = absl::StrCat("line ", line + 1, ":", column + 1, ": ", message);
    }
  }
  const std::string& first() const { return first_; }

 private:
  std::string first_;
};

}  // namespace

absl::StatusOr<v1::DaemonConfig> ParseConfigFile(const std::string& path,
                                                 const std::string& text) {
  v1::DaemonConfig p;
  google::protobuf::TextFormat::Parser parser;
  Errors errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &p)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": ", errors.first().empty() ? "cannot parse" : errors.first()));
  }
  return p;
}

absl::StatusOr<v1::DaemonConfig> LoadConfigFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--config ", path, ": cannot read (", std::strerror(errno), ")"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return ParseConfigFile(path, text.str());
}

}  // namespace nbdmgr
