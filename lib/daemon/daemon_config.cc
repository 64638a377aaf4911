#include "lib/daemon/daemon_config.h"

#include <unistd.h>

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "lib/convert/proto_convert.h"
#include "lib/state/qos_group_store.h"
#include "lib/util/duration.h"
#include "lib/util/size.h"
#include "lib/util/strings.h"

namespace nbdmgr {

uint64_t DefaultMemoryCap() {
  constexpr uint64_t kGiB = uint64_t{1} << 30;
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page_size = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return kGiB;
  const uint64_t ram =
      static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size);
  return std::min(kGiB, ram / 8);
}

namespace {

using Millis = std::chrono::milliseconds;

constexpr char kDefaultNbdListen[] = "tcp:127.0.0.1:10809";
constexpr char kDefaultControlListen[] = "unix:/run/nbdmgr/control.sock";

absl::Status FlagError(std::string_view flag, std::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat(ToAbsl(flag), ": ", ToAbsl(message)));
}

// Converts one MergedConfig: one method per group of fields, then the rules
// across fields.
class Converter {
 public:
  explicit Converter(const MergedConfig& m) : m_(m), p_(m.settings) {}

  absl::StatusOr<DaemonConfig> Run() {
    using Step = absl::Status (Converter::*)();
    for (Step step :
         {&Converter::Listeners, &Converter::ThreadsAndTimeouts,
          &Converter::Memory, &Converter::Limits, &Converter::Control,
          &Converter::Observability, &Converter::QosGroups, &Converter::Exports,
          &Converter::Tls, &Converter::ExportRules,
          &Converter::DefaultExport}) {
      if (absl::Status st = (this->*step)(); !st.ok()) return st;
    }
    return std::move(c_);
  }

 private:
  bool FromFlags(std::string_view field) const {
    return std::any_of(
        m_.from_flags.paths().begin(), m_.from_flags.paths().end(),
        [field](const std::string& path) { return path == field; });
  }
  // Names a value for an error: the flag if the command line gave it (or
  // there is no file), else the file, the field and the flag.
  std::string Where(std::string_view field, std::string_view flag) const {
    if (m_.file.empty() || FromFlags(field)) return std::string(flag);
    return absl::StrCat(m_.file, ": ", ToAbsl(field), " (", ToAbsl(flag), ")");
  }
  absl::Status Error(std::string_view field, std::string_view flag,
                     std::string_view message) const {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(field, flag), ": ", ToAbsl(message)));
  }
  // The duration `d` of `field` if `has`, else `fallback`.
  absl::StatusOr<Millis> Duration(std::string_view field, std::string_view flag,
                                  bool has, const google::protobuf::Duration& d,
                                  Millis fallback) const {
    if (!has) return fallback;
    return DurationFromProto(d, Where(field, flag));
  }

  absl::Status Listeners();
  absl::Status ThreadsAndTimeouts();
  absl::Status Memory();
  absl::Status Limits();
  absl::Status Control();
  absl::Status Observability();
  absl::Status QosGroups();
  absl::Status Exports();
  absl::Status Tls();
  absl::Status ExportRules();
  absl::Status DefaultExport();

  const MergedConfig& m_;
  const v1::DaemonConfig& p_;
  DaemonConfig c_;
};

absl::Status Converter::Listeners() {
  for (const std::string& text : p_.nbd_listen()) {
    absl::StatusOr<ListenAddress> a = ParseListenAddress(text);
    if (!a.ok()) {
      return Error("nbd_listen", "--nbd-listen", ToStd(a.status().message()));
    }
    c_.nbd_listen.push_back(*a);
  }
  if (c_.nbd_listen.empty()) {
    c_.nbd_listen.push_back(*ParseListenAddress(kDefaultNbdListen));
  }
  if (!p_.has_metrics_listen()) return absl::OkStatus();
  const std::string& value = p_.metrics_listen();
  if (value == "none") {
    c_.metrics_listen.clear();
    return absl::OkStatus();
  }
  std::string_view v = value;
  if (v.starts_with("tcp:")) v.remove_prefix(4);
  absl::StatusOr<ListenAddress> a =
      ParseListenAddress(absl::StrCat("tcp:", ToAbsl(v)));
  if (!a.ok() || a->host.find(':') != std::string::npos) {
    return Error(
        "metrics_listen", "--metrics-listen",
        absl::StrCat("expected HOST:PORT or none, got \"", value, "\""));
  }
  c_.metrics_listen = absl::StrCat(a->host, ":", a->port);
  return absl::OkStatus();
}

absl::Status Converter::ThreadsAndTimeouts() {
  struct Threads {
    const char* field;
    const char* flag;
    int value;
    int& out;
  };
  for (const Threads& t :
       {Threads{"io_threads", "--io-threads", p_.io_threads(), c_.io_threads},
        Threads{"blocking_threads", "--blocking-threads", p_.blocking_threads(),
                c_.blocking_threads}}) {
    if (t.value < 0 || t.value > kMaxThreads) {
      return Error(t.field, t.flag,
                   absl::StrCat("expected a number from 0 to ", kMaxThreads,
                                ", got \"", t.value, "\""));
    }
    t.out = t.value;
  }
  struct Timeout {
    const char* field;
    const char* flag;
    bool has;
    const google::protobuf::Duration& value;
    Millis& out;
  };
  for (const Timeout& t :
       {Timeout{"drain_timeout", "--drain-timeout", p_.has_drain_timeout(),
                p_.drain_timeout(), c_.drain_timeout},
        Timeout{"handshake_timeout", "--handshake-timeout",
                p_.has_handshake_timeout(), p_.handshake_timeout(),
                c_.handshake_timeout},
        Timeout{"idle_timeout", "--idle-timeout", p_.has_idle_timeout(),
                p_.idle_timeout(), c_.idle_timeout},
        Timeout{"stall_timeout", "--stall-timeout", p_.has_stall_timeout(),
                p_.stall_timeout(), c_.stall_timeout},
        Timeout{"open_timeout", "--open-timeout", p_.has_open_timeout(),
                p_.open_timeout(), c_.open_timeout}}) {
    absl::StatusOr<Millis> d = Duration(t.field, t.flag, t.has, t.value, t.out);
    if (!d.ok()) return d.status();
    t.out = *d;
  }
  if (c_.stall_timeout > kMaxStallTimeout) {
    return Error("stall_timeout", "--stall-timeout", "at most 24h");
  }
  return absl::OkStatus();
}

absl::Status Converter::Memory() {
  // Unset: auto (the struct's default); 0: none.
  if (p_.has_memory_cap_bytes()) c_.memory_cap_bytes = p_.memory_cap_bytes();
  if (p_.has_connection_memory_bytes()) {
    c_.connection_memory_bytes = p_.connection_memory_bytes();
  }
  if (p_.has_connection_share_percent()) {
    const uint32_t n = p_.connection_share_percent();
    if (n < 1 || n > 100) {
      return Error(
          "connection_share_percent", "--connection-share",
          absl::StrCat("expected a percentage from 1 to 100, got \"", n, "\""));
    }
    c_.connection_share_percent = n;
  }
  return absl::OkStatus();
}

absl::Status Converter::Limits() {
  if (p_.has_max_connections()) c_.max_connections = p_.max_connections();
  if (p_.has_max_exports()) {
    const uint32_t n = p_.max_exports();
    if (n == 0 || n > kMaxExportsLimit) {
      return Error("max_exports", "--max-exports",
                   absl::StrCat("expected a count from 1 to ", kMaxExportsLimit,
                                ", got \"", n, "\""));
    }
    c_.max_exports = n;
  }
  return absl::OkStatus();
}

absl::Status Converter::Control() {
  if (!p_.has_control_listen()) {
    c_.control_listen = *ParseListenAddress(kDefaultControlListen);
  } else if (p_.control_listen() != "none") {
    absl::StatusOr<ListenAddress> a = ParseListenAddress(p_.control_listen());
    if (!a.ok()) {
      return Error("control_listen", "--control-listen",
                   ToStd(a.status().message()));
    }
    c_.control_listen = *a;
  }
  c_.control_tls_cert = p_.control_tls_cert();
  c_.control_tls_key = p_.control_tls_key();
  c_.control_tls_ca = p_.control_tls_ca();
  c_.control_insecure = p_.control_insecure();
  if (p_.has_state_dir()) {
    const std::string& v = p_.state_dir();
    if (v != "none" && (v.empty() || v.front() != '/')) {
      return Error("state_dir", "--state-dir",
                   "must be an absolute path (or none)");
    }
    c_.state_dir = v == "none" ? "" : v;
  }
  for (const std::string& v : p_.allow_path()) {
    if (v.empty() || v.front() != '/') {
      return Error("allow_path", "--allow-path",
                   absl::StrCat("must be an absolute directory: \"", v, "\""));
    }
    c_.allow_paths.push_back(v);
  }
  if (c_.control_listen &&
      c_.control_listen->kind == ListenAddress::Kind::kTcp &&
      c_.control_tls_cert.empty() && !c_.control_insecure) {
    return FlagError("--control-listen",
                     "a TCP control address needs --control-tls-cert and "
                     "--control-tls-key (or --control-insecure)");
  }
  return absl::OkStatus();
}

absl::Status Converter::Observability() {
  // Empty in the file is unset; given as a flag, it is a bad level.
  if (!p_.log_level().empty() || FromFlags("log_level")) {
    static const std::set<std::string> kLevels = {"trace", "debug", "info",
                                                  "warn", "error"};
    if (!kLevels.contains(p_.log_level())) {
      return Error("log_level", "--log-level",
                   absl::StrCat("unknown level \"", p_.log_level(),
                                "\" (trace, debug, info, warn, error)"));
    }
    c_.log_level = p_.log_level();
  }
  c_.ready_file = p_.ready_file();
  if (p_.has_request_stats()) c_.request_stats = p_.request_stats();
  return absl::OkStatus();
}

absl::Status Converter::QosGroups() {
  for (int i = 0; i < p_.qos_groups_size(); ++i) {
    const v1::QosGroup& g = p_.qos_groups(i);
    auto error = [&](absl::string_view message) {
      return absl::InvalidArgumentError(
          absl::StrCat(m_.file.empty() ? "" : absl::StrCat(m_.file, ": "),
                       "qos_groups[", i, "] (\"", g.name(), "\"): ", message));
    };
    absl::StatusOr<std::string> id = QosGroupIdFromName(g.name());
    if (!id.ok()) return error(id.status().message());
    absl::StatusOr<QosGroupConfig> c = QosGroupConfigFromProto(g, *id);
    if (!c.ok()) return error(c.status().message());
    c_.qos_groups.push_back(std::move(*c));
  }
  c_.qos_groups.insert(c_.qos_groups.end(), m_.flag_qos_groups.begin(),
                       m_.flag_qos_groups.end());
  if (c_.qos_groups.size() > kMaxQosGroups) {
    return Error("qos_groups", "--qos-group",
                 absl::StrCat(c_.qos_groups.size(),
                              " QoS groups given; at most ", kMaxQosGroups));
  }
  std::set<std::string> names;
  for (const QosGroupConfig& g : c_.qos_groups) {
    if (!names.insert(g.name).second) {
      return Error(
          "qos_groups", "--qos-group",
          absl::StrCat("QoS group \"", g.name, "\" is declared twice"));
    }
  }
  return absl::OkStatus();
}

absl::Status Converter::Exports() {
  for (int i = 0; i < p_.exports_size(); ++i) {
    const v1::Export& e = p_.exports(i);
    std::string id = e.name();
    if (id.starts_with("exports/")) id = id.substr(8);
    absl::StatusOr<ExportConfig> c = ExportConfigFromProto(e, id);
    if (!c.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          m_.file.empty() ? "" : absl::StrCat(m_.file, ": "), "exports[", i,
          "] (\"", id, "\"): ", c.status().message()));
    }
    c_.exports.push_back(std::move(*c));
  }
  c_.exports.insert(c_.exports.end(), m_.flag_exports.begin(),
                    m_.flag_exports.end());
  return absl::OkStatus();
}

absl::Status Converter::Tls() {
  const v1::DaemonConfig::Tls& t = p_.tls();
  c_.tls = TlsFiles{.cert_file = t.cert_file(),
                    .key_file = t.key_file(),
                    .ca_file = t.ca_file(),
                    .psk_file = t.psk_file()};
  if (c_.tls.cert_file.empty() != c_.tls.key_file.empty()) {
    return FlagError("--tls-cert", "--tls-cert and --tls-key go together");
  }
  if (!c_.tls.ca_file.empty() && c_.tls.cert_file.empty()) {
    return FlagError("--tls-ca", "needs --tls-cert and --tls-key");
  }
  for (const ExportConfig& e : c_.exports) {
    if (e.tls != TlsMode::kOff && c_.tls.empty()) {
      return FlagError(
          "--export",
          absl::StrCat("export \"", e.name,
                       "\" has tls=", ToAbsl(NameOf(e.tls)),
                       ", which needs --tls-cert/--tls-key or --tls-psk"));
    }
  }
  return absl::OkStatus();
}

absl::Status Converter::ExportRules() {
  if (c_.exports.size() > c_.max_exports) {
    return FlagError("--export", absl::StrCat(c_.exports.size(),
                                              " exports given, more than "
                                              "--max-exports ",
                                              c_.max_exports));
  }
  std::set<std::string> names;
  for (const ExportConfig& e : c_.exports) {
    if (!names.insert(e.name).second) {
      return FlagError("--export", absl::StrCat("export \"", e.name,
                                                "\" is declared twice"));
    }
  }
  return absl::OkStatus();
}

absl::Status Converter::DefaultExport() {
  // Empty in the file is unset (the first export); given as a flag, it
  // means no default export.
  if (p_.default_export().empty() && !FromFlags("default_export")) {
    if (!c_.exports.empty()) c_.default_export = c_.exports.front().name;
    return absl::OkStatus();
  }
  c_.default_export = p_.default_export();
  if (c_.default_export.empty()) return absl::OkStatus();
  for (const ExportConfig& e : c_.exports) {
    if (e.name == c_.default_export) return absl::OkStatus();
  }
  return FlagError("--default-export", absl::StrCat("no --export named \"",
                                                    c_.default_export, "\""));
}

}  // namespace

absl::StatusOr<DaemonConfig> DaemonConfigFromMerged(const MergedConfig& m) {
  return Converter(m).Run();
}

std::string DescribeConfig(const DaemonConfig& c) {
  std::string out = "configuration is valid\n";
  auto line = [&out](std::string_view key, std::string_view value) {
    absl::StrAppend(&out, "  ", ToAbsl(key), ": ", ToAbsl(value), "\n");
  };
  for (const ListenAddress& a : c.nbd_listen) line("nbd listen", a.ToString());
  line("control listen",
       c.control_listen ? c.control_listen->ToString() : std::string("none"));
  line("state dir", c.state_dir.empty() ? std::string("none") : c.state_dir);
  line("metrics listen",
       c.metrics_listen.empty() ? std::string("none") : c.metrics_listen);
  line("tls", c.tls.empty()             ? "off"
              : c.tls.cert_file.empty() ? "psk"
              : c.tls.psk_file.empty()  ? "x509"
                                        : "x509+psk");
  line("memory cap", c.memory_cap_bytes ? FormatSize(c.memory_cap_bytes)
                                        : std::string("none"));
  line("connection share", absl::StrCat(c.connection_share_percent, "%"));
  line("connection memory", c.connection_memory_bytes
                                ? FormatSize(c.connection_memory_bytes)
                                : std::string("none"));
  line("stall timeout", c.stall_timeout.count() == 0
                            ? std::string("never")
                            : absl::StrCat(c.stall_timeout.count(), " ms"));
  for (const ExportConfig& e : c.exports) {
    line("export",
         absl::StrCat(
             e.name, " (", ToAbsl(NameOf(e.backend)), e.path.empty() ? "" : " ",
             e.path, e.size ? absl::StrCat(" ", FormatSize(*e.size)) : "",
             e.base.empty() ? "" : ", overlay of ", e.base,
             e.read_only ? ", read-only" : "",
             e.tls != TlsMode::kOff
                 ? absl::StrCat(", tls=", ToAbsl(NameOf(e.tls)))
                 : "",
             e.qos.any() ? absl::StrCat(", ", FormatQosSpec(e.qos)) : "",
             e.qos_group.empty() ? "" : ", QoS group ", e.qos_group,
             e.name == c.default_export ? ", default" : "", ")"));
  }
  for (const QosGroupConfig& g : c.qos_groups) {
    line("qos group",
         absl::StrCat(g.name, " (",
                      g.limits.any() ? FormatQosSpec(g.limits) : "no limits",
                      ")"));
  }
  return out;
}

absl::Status CheckConfigAgainstState(const DaemonConfig& c) {
  std::set<std::string> known;
  for (const QosGroupConfig& g : c.qos_groups) known.insert(g.name);
  // The first export naming a group not known (null: none).
  auto missing = [&c, &known]() -> const ExportConfig* {
    for (const ExportConfig& e : c.exports) {
      if (!e.qos_group.empty() && !known.count(e.qos_group)) return &e;
    }
    return nullptr;
  };
  const ExportConfig* e = missing();
  if (e == nullptr) return absl::OkStatus();
  std::string saved_in;
  if (!c.state_dir.empty()) {
    QosGroupStore store(c.state_dir);
    absl::StatusOr<std::vector<QosGroupConfig>> saved = store.Load();
    if (!saved.ok()) {
      return absl::Status(
          saved.status().code(),
          absl::StrCat("export ", e->name, ": QoS group \"", e->qos_group,
                       "\" is not in the configuration, and the saved "
                       "groups could not be read: ",
                       saved.status().message()));
    }
    for (const QosGroupConfig& g : *saved) known.insert(g.name);
    e = missing();
    if (e == nullptr) return absl::OkStatus();
    saved_in = absl::StrCat(", nor saved in ", store.path());
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "export ", e->name, ": QoS group \"", e->qos_group,
      "\" does not exist: not given with --qos-group or in the config file",
      saved_in));
}

}  // namespace nbdmgr
