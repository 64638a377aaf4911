#include "lib/daemon/daemon_flags.h"

#include <iterator>
#include <utility>
#include <vector>

// No pragmas needed: CLI11 (Debian's libcli11-dev, CMake target
// CLI11::CLI11) lives in /usr/include, a system include directory, so GCC
// reports no -Wall -Wextra warnings from its headers.
#include <CLI/CLI.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/field_mask_util.h"
#include "lib/convert/proto_convert.h"
#include "lib/daemon/config_file.h"
#include "lib/util/duration.h"
#include "lib/util/size.h"
#include "lib/util/strings.h"

namespace nbdmgr {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

// How a flag's text becomes its field's value.
enum class Kind {
  kText,          // a string (a repeated one gets one element per flag)
  kInt,           // int32
  kCount,         // uint32
  kPercent,       // uint32 from "25" or "25%"
  kDuration,      // google.protobuf.Duration from "30s", "250ms", "0"
  kMemoryCap,     // uint64 from a size, none (0) or auto (unset)
  kSizeOrNone,    // uint64 from a size or none (0)
  kOnOff,         // bool from on or off
  kSwitch,        // bool, set by the flag alone (no value)
  kExportSpec,    // an --export spec: not a field, see ParseExportSpec
  kQosGroupSpec,  // a --qos-group spec: not a field, see ParseQosGroupSpec
};

// One flag: where --help shows it, and the v1::DaemonConfig field it sets.
struct FlagDef {
  const char* group;
  const char* flag;   // "--io-threads"
  const char* value;  // its value in --help: "N"
  const char* field;  // "io_threads", "tls.cert_file"
  Kind kind;
  const char* expected;  // kInt, kCount, kPercent: told for a bad value
  const char* help;
};

// Every flag that sets a field; the range checks are DaemonConfigFromMerged's.
constexpr FlagDef kFlags[] = {
    {"Serving", "--nbd-listen", "ADDR", "nbd_listen", Kind::kText, "",
     "Where to accept NBD clients: tcp:HOST:PORT or\n"
     "unix:/PATH. Repeatable. Default\n"
     "tcp:127.0.0.1:10809."},
    {"Serving", "--export", "SPEC", "", Kind::kExportSpec, "",
     "An export to serve (see EXPORT SPEC below).\n"
     "Repeatable."},
    {"Serving", "--qos-group", "SPEC", "", Kind::kQosGroupSpec, "",
     "A QoS group exports may join with qos-group=NAME\n"
     "(see QOS GROUP SPEC below). Repeatable."},
    {"Serving", "--default-export", "NAME", "default_export", Kind::kText, "",
     "Export served to clients that ask for the empty\n"
     "name (nbd://host/). Default: the first export."},
    {"Serving", "--max-connections", "N", "max_connections", Kind::kCount,
     "a count",
     "NBD connections at once; more are closed at\n"
     "accept (default 4096; 0 = no cap). Per export:\n"
     "max-clients=N."},
    {"Serving", "--max-exports", "N", "max_exports", Kind::kCount,
     "a count from 1 to 100000",
     "Exports the daemon holds at most, given, created\n"
     "over the API or FAILED (default 512)."},
    {"Memory", "--memory-cap", "SIZE|none|auto", "memory_cap_bytes",
     Kind::kMemoryCap, "",
     "Daemon-wide cap on request-buffer memory, e.g.\n"
     "1GiB (default auto: the smaller of 1 GiB and 1/8\n"
     "of RAM; none: no cap). Requests never wait for\n"
     "it: when it is full they stream through their\n"
     "connection's 64 KiB reserve instead."},
    {"Memory", "--connection-share", "PCT", "connection_share_percent",
     Kind::kPercent, "a percentage from 1 to 100",
     "The most one connection may hold of the daemon\n"
     "cap and of its export's cap, in percent (default\n"
     "25)."},
    {"Memory", "--connection-memory", "SIZE|none", "connection_memory_bytes",
     Kind::kSizeOrNone, "",
     "The most one connection may hold in buffers and\n"
     "pinned pages at once, cap or not (default\n"
     "16MiB): what a client that stops moving can hold\n"
     "until the stall timeout drops it. Larger\n"
     "requests stream."},
    {"Timeouts", "--stall-timeout", "DUR", "stall_timeout", Kind::kDuration, "",
     "Disconnect a client that stops sending a\n"
     "request's payload, or stops reading replies, for\n"
     "DUR, and free all it held (default 30s; 0 =\n"
     "never; at most 24h; exports may override with\n"
     "stall-timeout=DUR)."},
    {"Timeouts", "--handshake-timeout", "DUR", "handshake_timeout",
     Kind::kDuration, "",
     "Disconnect clients that have not chosen an\n"
     "export after DUR (default 10s; 0 = never)."},
    {"Timeouts", "--idle-timeout", "DUR", "idle_timeout", Kind::kDuration, "",
     "Disconnect clients that send no request for DUR\n"
     "while nothing is in flight (default 0 = never)."},
    {"Timeouts", "--drain-timeout", "DUR", "drain_timeout", Kind::kDuration, "",
     "On SIGINT/SIGTERM, how long in-flight requests\n"
     "may take to finish before connections are closed\n"
     "(default 30s)."},
    {"Timeouts", "--open-timeout", "DUR", "open_timeout", Kind::kDuration, "",
     "At start, saved exports still opening after DUR\n"
     "come up FAILED and are not waited for (default\n"
     "60s; 0 = wait)."},
    {"NBD TLS", "--tls-cert", "F", "tls.cert_file", Kind::kText, "",
     "Offer NBD TLS (STARTTLS) with this X.509\n"
     "certificate (PEM, chain allowed); needs\n"
     "--tls-key."},
    {"NBD TLS", "--tls-key", "F", "tls.key_file", Kind::kText, "",
     "The private key of --tls-cert."},
    {"NBD TLS", "--tls-ca", "F", "tls.ca_file", Kind::kText, "",
     "Also require client certificates signed by this\n"
     "CA."},
    {"NBD TLS", "--tls-psk", "F", "tls.psk_file", Kind::kText, "",
     "Offer TLS with pre-shared keys from this psktool\n"
     "file (IDENTITY:HEXKEY lines); with or without a\n"
     "cert. Exports choose with\n"
     "tls=off|optional|require."},
    {"Control API", "--control-listen", "ADDR", "control_listen", Kind::kText,
     "",
     "gRPC control API (nbdctl): unix:/PATH (mode\n"
     "0600), tcp:HOST:PORT (needs TLS or\n"
     "--control-insecure), or none. Default\n"
     "unix:/run/nbdmgr/control.sock."},
    {"Control API", "--control-tls-cert", "F", "control_tls_cert", Kind::kText,
     "", "TLS certificate for a TCP control address."},
    {"Control API", "--control-tls-key", "F", "control_tls_key", Kind::kText,
     "", "The private key of --control-tls-cert."},
    {"Control API", "--control-tls-ca", "F", "control_tls_ca", Kind::kText, "",
     "Require client certificates signed by this CA."},
    {"Control API", "--control-insecure", "", "control_insecure", Kind::kSwitch,
     "", "Allow a TCP control address without TLS."},
    {"Control API", "--state-dir", "DIR", "state_dir", Kind::kText, "",
     "Where exports created over the API are persisted\n"
     "and recreated from at start. Default\n"
     "/var/lib/nbdmgr; none disables persistence."},
    {"Control API", "--allow-path", "DIR", "allow_path", Kind::kText, "",
     "File exports created over the API must live\n"
     "under DIR (repeatable; .. and symlink escapes\n"
     "are refused)."},
    {"Metrics and logging", "--metrics-listen", "ADDR", "metrics_listen",
     Kind::kText, "",
     "Prometheus metrics at http://ADDR/metrics; ADDR\n"
     "is HOST:PORT or none. Default 127.0.0.1:9810."},
    {"Metrics and logging", "--request-stats", "on|off", "request_stats",
     Kind::kOnOff, "",
     "Count requests, bytes and latency per export (on\n"
     "by default; off leaves those counters at zero)."},
    {"Metrics and logging", "--log-level", "LEVEL", "log_level", Kind::kText,
     "", "trace, debug, info, warn, error. Default info."},
    {"Metrics and logging", "--ready-file", "PATH", "ready_file", Kind::kText,
     "",
     "Once serving, write the bound addresses there\n"
     "(one per line; useful with port 0)."},
    {"Threads", "--io-threads", "N", "io_threads", Kind::kInt,
     "a number from 0 to 1024", "Network threads (0 = one per core)."},
    {"Threads", "--blocking-threads", "N", "blocking_threads", Kind::kInt,
     "a number from 0 to 1024", "Threads for file I/O (0 = automatic)."},
};

constexpr char kExportSpecHelp[] =
    R"(EXPORT SPEC (--export): comma-separated key=value pairs
  name=NAME          (required) letters, digits, . _ : -
  backend=KIND       (required) memory, file or null
  size=SIZE          e.g. 1GiB; required for memory/null; for file,
                     creates a missing file
  path=/FILE         the file or block device (file)
  read-only=true     refuse writes
  description=TEXT   shown by nbdinfo --list (a literal comma is \,)
  tls=MODE           off (default), optional or require
  max-clients=N      connected clients at once (0 = no cap)
  buffer-strategy=S  pool (default), exact, fixed, grow or stream
  memory-cap=SIZE    cap on this export's request buffers (full:
                     requests stream)
  stall-timeout=DUR  override --stall-timeout
  pool-idle-release=DUR  free idle pool buffers after DUR (default 5s)
  min-block-size=N, preferred-block-size=N, max-payload=N
                     advertised block sizes (defaults 1, 4KiB, 32MiB)
  iops=N             operations per second, reads and writes (QoS;
                     requests beyond a limit wait, none fail)
  iops-read=N, iops-write=N
                     operations per second of reads, of writes
  bandwidth=SIZE     bytes per second, reads and writes (e.g. 200MiB)
  bandwidth-read=SIZE, bandwidth-write=SIZE
                     bytes per second of reads, of writes
  KEY-burst=N|SIZE   how much of a limit may go at once after a quiet
                     spell (iops-burst=, bandwidth-read-burst=, ...;
                     default a tenth of a second's worth)
  qos-group=NAME     also share the limits of this QoS group
  Example: --export name=scratch,backend=memory,size=1GiB

QOS GROUP SPEC (--qos-group): name=NAME plus the QoS keys above
  Example: --qos-group name=tenant1,iops=5000,bandwidth=200MiB

--config FILE: flags override the file's values; --nbd-listen and
--allow-path replace its lists, --export and --qos-group add to its
exports and QoS groups.)";

// Where CLI11 leaves the command line, before it becomes proto fields.
struct FlagValues {
  // Per kFlags entry: the values given, and its CLI11 option.
  std::vector<std::vector<std::string>> values =
      std::vector<std::vector<std::string>>(std::size(kFlags));
  std::vector<CLI::Option*> options =
      std::vector<CLI::Option*>(std::size(kFlags));
  std::vector<std::string> config;  // --config (more than one: an error)
  bool check_config = false;
  bool version = false;
};

// The field of v1::DaemonConfig at `path` ("io_threads", "tls.cert_file").
const FieldDescriptor* FieldOf(std::string_view path) {
  const google::protobuf::Descriptor* d = v1::DaemonConfig::descriptor();
  for (;;) {
    const size_t dot = path.find('.');
    const FieldDescriptor* f =
        d->FindFieldByName(std::string(path.substr(0, dot)));
    if (dot == std::string_view::npos) return f;
    d = f->message_type();
    path.remove_prefix(dot + 1);
  }
}

bool IsList(const FlagDef& def) {
  if (def.kind == Kind::kExportSpec || def.kind == Kind::kQosGroupSpec) {
    return true;
  }
  if (def.kind == Kind::kSwitch) return false;
  return FieldOf(def.field)->is_repeated();
}

// The field at `path` and the message in `root` holding it (nested
// messages are created).
std::pair<Message*, const FieldDescriptor*> FieldAt(v1::DaemonConfig& root,
                                                    std::string_view path) {
  Message* m = &root;
  if (const size_t dot = path.rfind('.'); dot != std::string_view::npos) {
    m = m->GetReflection()->MutableMessage(m, FieldOf(path.substr(0, dot)));
  }
  return {m, FieldOf(path)};
}

// Registers every flag on `app`, the values landing in `v`.
void AddFlags(CLI::App& app, FlagValues& v) {
  app.allow_extras();  // unknown flags are reported by ParseCommandLine
  app.get_formatter()->column_width(30);
  app.footer(kExportSpecHelp);
  for (size_t i = 0; i < std::size(kFlags); ++i) {
    const FlagDef& d = kFlags[i];
    if (d.kind == Kind::kSwitch) {
      v.options[i] = app.add_flag(d.flag, d.help)->group(d.group);
      continue;
    }
    v.options[i] =
        app.add_option(d.flag, v.values[i], d.help)
            ->type_name(d.value)
            ->group(d.group)
            ->expected(1)
            ->allow_extra_args(false)
            ->multi_option_policy(IsList(d) ? CLI::MultiOptionPolicy::TakeAll
                                            : CLI::MultiOptionPolicy::TakeLast);
  }
  constexpr char kGeneral[] = "General";
  app.add_option("--config", v.config,
                 "Read settings from FILE (protobuf text format\n"
                 "of nbdmgr.v1.DaemonConfig; see\n"
                 "deploy/nbdmgrd.conf).")
      ->type_name("FILE")
      ->group(kGeneral)
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_flag("--check-config", v.check_config,
               "Validate the configuration (file and flags),\n"
               "print it, and exit (0 if valid, 2 if not).")
      ->group(kGeneral);
  app.set_help_flag("-h,--help", "Show this help.")->group(kGeneral);
  app.add_flag("--version", v.version, "Show the version.")->group(kGeneral);
}

absl::Status FlagError(std::string_view flag, std::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat(ToAbsl(flag), ": ", ToAbsl(message)));
}

// Runs CLI11 on the arguments; true if --help was asked for.
// InvalidArgument for a missing value ("--flag: missing value"), an unknown
// flag or a stray argument (the first one), or whatever else CLI11 refuses.
absl::StatusOr<bool> ParseCommandLine(CLI::App& app, int argc,
                                      const char* const* argv) {
  // CLI11 2.1 reads "--flag=" as "--flag" followed by the next argument:
  // split it so that the value is the empty string. CLI11 wants the
  // arguments reversed.
  std::vector<std::string> args;
  for (int i = argc - 1; i >= 1; --i) {
    std::string_view arg = argv[i];
    if (arg.starts_with("--") && arg.size() > 3 && arg.ends_with("=")) {
      args.emplace_back();
      arg.remove_suffix(1);
    }
    args.emplace_back(arg);
  }
  try {
    app.parse(args);
  } catch (const CLI::CallForHelp&) {
    return true;
  } catch (const CLI::ArgumentMismatch& e) {
    std::string_view what = e.what();
    if (what.ends_with(" missing")) {
      return FlagError(what.substr(0, what.find(':')), "missing value");
    }
    return absl::InvalidArgumentError(e.what());
  } catch (const CLI::ParseError& e) {
    return absl::InvalidArgumentError(e.what());
  }
  // allow_extras() left the first unknown argument here, not to CLI11's
  // "The following argument was not expected".
  const std::vector<std::string> extra = app.remaining();
  if (extra.empty()) return false;
  const std::string& arg = extra.front();
  if (arg.starts_with("-") && arg.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown flag ", arg.substr(0, arg.find('=')), " (see --help)"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unexpected argument \"", arg, "\" (see --help)"));
}

absl::Status BadValue(const FlagDef& def, const std::string& value) {
  return FlagError(def.flag, absl::StrCat("expected ", def.expected, ", got \"",
                                          value, "\""));
}

// The size in `value` (or none: 0); `more` lists the other words allowed.
absl::StatusOr<uint64_t> SizeOrNone(const FlagDef& def,
                                    const std::string& value,
                                    std::string_view more) {
  if (value == "none") return 0;
  absl::StatusOr<uint64_t> n = ParseSize(value);
  if (!n.ok()) {
    return FlagError(def.flag, absl::StrCat(n.status().message(), " (or ",
                                            ToAbsl(more), ")"));
  }
  return *n;
}

// Stores one value of the flag `def` in its field of `out`. The syntax is
// checked here; ranges are DaemonConfigFromMerged's.
absl::Status SetField(const FlagDef& def, const std::string& value,
                      v1::DaemonConfig& out) {
  auto [m, f] = FieldAt(out, def.field);
  const google::protobuf::Reflection* r = m->GetReflection();
  switch (def.kind) {
    case Kind::kText:
      f->is_repeated() ? r->AddString(m, f, value) : r->SetString(m, f, value);
      return absl::OkStatus();
    case Kind::kInt: {
      int32_t n = 0;
      if (!absl::SimpleAtoi(value, &n)) return BadValue(def, value);
      r->SetInt32(m, f, n);
      return absl::OkStatus();
    }
    case Kind::kCount:
    case Kind::kPercent: {
      std::string_view v = value;
      if (def.kind == Kind::kPercent && v.ends_with("%")) v.remove_suffix(1);
      uint32_t n = 0;
      if (!absl::SimpleAtoi(ToAbsl(v), &n)) return BadValue(def, value);
      r->SetUInt32(m, f, n);
      return absl::OkStatus();
    }
    case Kind::kDuration: {
      absl::StatusOr<std::chrono::milliseconds> d = ParseDuration(value);
      if (!d.ok()) return FlagError(def.flag, ToStd(d.status().message()));
      r->MutableMessage(m, f)->CopyFrom(DurationToProto(*d));
      return absl::OkStatus();
    }
    case Kind::kMemoryCap:
    case Kind::kSizeOrNone: {
      const bool cap = def.kind == Kind::kMemoryCap;
      if (cap && value == "auto") {
        r->ClearField(m, f);  // unset: the default
        return absl::OkStatus();
      }
      absl::StatusOr<uint64_t> n =
          SizeOrNone(def, value, cap ? "none, auto" : "none");
      if (!n.ok()) return n.status();
      r->SetUInt64(m, f, *n);
      return absl::OkStatus();
    }
    case Kind::kOnOff:
      if (value != "on" && value != "off") {
        return FlagError(
            def.flag, absl::StrCat("expected on or off, got \"", value, "\""));
      }
      r->SetBool(m, f, value == "on");
      return absl::OkStatus();
    case Kind::kSwitch:
      r->SetBool(m, f, true);
      return absl::OkStatus();
    case Kind::kExportSpec:
    case Kind::kQosGroupSpec:
      break;
  }
  return absl::InternalError(absl::StrCat(def.flag, ": not a field"));
}

// The given flags as proto fields (flags.settings, flags.from_flags),
// exports (flags.flag_exports) and QoS groups (flags.flag_qos_groups).
absl::Status ApplyFlags(const FlagValues& v, MergedConfig& flags) {
  for (size_t i = 0; i < std::size(kFlags); ++i) {
    const FlagDef& d = kFlags[i];
    if (v.options[i]->count() == 0) continue;
    if (d.kind == Kind::kExportSpec) {
      for (const std::string& spec : v.values[i]) {
        absl::StatusOr<ExportConfig> e = ParseExportSpec(spec);
        if (!e.ok()) return FlagError(d.flag, ToStd(e.status().message()));
        flags.flag_exports.push_back(std::move(*e));
      }
      continue;
    }
    if (d.kind == Kind::kQosGroupSpec) {
      for (const std::string& spec : v.values[i]) {
        absl::StatusOr<QosGroupConfig> g = ParseQosGroupSpec(spec);
        if (!g.ok()) return FlagError(d.flag, ToStd(g.status().message()));
        flags.flag_qos_groups.push_back(std::move(*g));
      }
      continue;
    }
    // A switch has no value: it sets its field to true.
    const std::vector<std::string> values =
        d.kind == Kind::kSwitch ? std::vector<std::string>{""} : v.values[i];
    for (const std::string& value : values) {
      if (absl::Status st = SetField(d, value, flags.settings); !st.ok()) {
        return st;
      }
    }
    flags.from_flags.add_paths(d.field);
  }
  return absl::OkStatus();
}

// The config file `path` with `flags` over it.
absl::StatusOr<MergedConfig> MergeOverFile(const std::string& path,
                                           MergedConfig flags) {
  absl::StatusOr<v1::DaemonConfig> file = LoadConfigFile(path);
  if (!file.ok()) return file.status();
  // Each field a flag set replaces the file's, lists included; the flags'
  // exports and QoS groups (flag_exports, flag_qos_groups) are added to the
  // file's when converted.
  using google::protobuf::util::FieldMaskUtil;
  FieldMaskUtil::MergeOptions replace;
  replace.set_replace_message_fields(true);
  replace.set_replace_repeated_fields(true);
  FieldMaskUtil::MergeMessageTo(flags.settings, flags.from_flags, replace,
                                &*file);
  flags.settings = std::move(*file);
  flags.file = path;
  return flags;
}

}  // namespace

std::string DaemonUsage() {
  CLI::App app("Serves block devices over the NBD protocol.", "nbdmgrd");
  FlagValues unused;
  AddFlags(app, unused);
  return app.help();
}

absl::StatusOr<DaemonFlags> ParseDaemonFlags(int argc,
                                             const char* const* argv) {
  CLI::App app("Serves block devices over the NBD protocol.", "nbdmgrd");
  FlagValues v;
  AddFlags(app, v);
  DaemonFlags out;
  absl::StatusOr<bool> help = ParseCommandLine(app, argc, argv);
  if (!help.ok()) return help.status();
  out.help = *help;
  out.version = v.version;
  if (out.help || out.version) return out;
  out.check_config = v.check_config;
  if (v.config.size() > 1) return FlagError("--config", "given more than once");
  MergedConfig merged;
  if (absl::Status st = ApplyFlags(v, merged); !st.ok()) return st;
  if (!v.config.empty()) {
    out.config_file = v.config.front();
    absl::StatusOr<MergedConfig> m =
        MergeOverFile(out.config_file, std::move(merged));
    if (!m.ok()) return m.status();
    merged = std::move(*m);
  }
  absl::StatusOr<DaemonConfig> config = DaemonConfigFromMerged(merged);
  if (!config.ok()) return config.status();
  out.config = std::move(*config);
  return out;
}

}  // namespace nbdmgr
