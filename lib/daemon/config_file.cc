#include "lib/daemon/config_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "lib/control/proto_convert.h"
#include "lib/util/duration.h"
#include "nbdmgr/v1/config.pb.h"

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

// The duration as a flag value; one out of range is passed on in a form
// the flag parser rejects with its own message.
std::string Millis(const google::protobuf::Duration& d) {
  absl::StatusOr<std::chrono::milliseconds> ms = DurationFromProto(d, "");
  if (!ms.ok()) return absl::StrCat(d.seconds(), "s", d.nanos(), "ns");
  return absl::StrCat(ms->count(), "ms");
}

}  // namespace

absl::StatusOr<ConfigFileContents> ParseConfigFile(const std::string& path,
                                                   const std::string& text) {
  v1::DaemonConfig p;
  google::protobuf::TextFormat::Parser parser;
  Errors errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &p)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": ", errors.first().empty() ? "cannot parse" : errors.first()));
  }
  ConfigFileContents out;
  auto flag = [&out](const char* name, std::string value) {
    out.flags.emplace_back(name, std::move(value));
  };
  for (const std::string& a : p.nbd_listen()) flag("--nbd-listen", a);
  if (!p.default_export().empty()) flag("--default-export", p.default_export());
  if (p.io_threads() != 0) flag("--io-threads", std::to_string(p.io_threads()));
  if (p.blocking_threads() != 0) {
    flag("--blocking-threads", std::to_string(p.blocking_threads()));
  }
  if (p.has_drain_timeout()) flag("--drain-timeout", Millis(p.drain_timeout()));
  if (p.has_memory_cap_bytes()) {
    flag("--memory-cap", p.memory_cap_bytes() == 0
                             ? std::string("none")
                             : std::to_string(p.memory_cap_bytes()));
  }
  if (!p.log_level().empty()) flag("--log-level", p.log_level());
  if (!p.ready_file().empty()) flag("--ready-file", p.ready_file());
  if (p.has_control_listen()) flag("--control-listen", p.control_listen());
  if (!p.control_tls_cert().empty()) {
    flag("--control-tls-cert", p.control_tls_cert());
  }
  if (!p.control_tls_key().empty())
    flag("--control-tls-key", p.control_tls_key());
  if (!p.control_tls_ca().empty()) flag("--control-tls-ca", p.control_tls_ca());
  if (p.control_insecure()) flag("--control-insecure", "true");
  if (p.has_state_dir()) flag("--state-dir", p.state_dir());
  for (const std::string& a : p.allow_path()) flag("--allow-path", a);
  if (p.has_metrics_listen()) flag("--metrics-listen", p.metrics_listen());
  if (p.has_request_stats()) {
    flag("--request-stats", p.request_stats() ? "on" : "off");
  }
  if (!p.tls().cert_file().empty()) flag("--tls-cert", p.tls().cert_file());
  if (!p.tls().key_file().empty()) flag("--tls-key", p.tls().key_file());
  if (!p.tls().ca_file().empty()) flag("--tls-ca", p.tls().ca_file());
  if (!p.tls().psk_file().empty()) flag("--tls-psk", p.tls().psk_file());
  if (p.has_handshake_timeout()) {
    flag("--handshake-timeout", Millis(p.handshake_timeout()));
  }
  if (p.has_idle_timeout()) flag("--idle-timeout", Millis(p.idle_timeout()));
  if (p.has_max_connections()) {
    flag("--max-connections", std::to_string(p.max_connections()));
  }
  if (p.has_max_exports()) {
    flag("--max-exports", std::to_string(p.max_exports()));
  }
  if (p.has_stall_timeout()) flag("--stall-timeout", Millis(p.stall_timeout()));
  if (p.has_connection_memory_bytes()) {
    flag("--connection-memory",
         p.connection_memory_bytes() == 0
             ? std::string("none")
             : std::to_string(p.connection_memory_bytes()));
  }
  if (p.has_connection_share_percent()) {
    flag("--connection-share", std::to_string(p.connection_share_percent()));
  }
  for (int i = 0; i < p.exports_size(); ++i) {
    const v1::Export& e = p.exports(i);
    std::string id = e.name();
    if (id.starts_with("exports/")) id = id.substr(8);
    absl::StatusOr<ExportConfig> c = ExportConfigFromProto(e, id);
    if (!c.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": exports[", i, "] (\"", id, "\"): ", c.status().message()));
    }
    out.exports.push_back(std::move(*c));
  }
  return out;
}

absl::StatusOr<ConfigFileContents> LoadConfigFile(const std::string& path) {
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
