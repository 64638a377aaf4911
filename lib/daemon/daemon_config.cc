#include "lib/daemon/daemon_config.h"

#include <unistd.h>

#include <algorithm>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "lib/daemon/config_file.h"
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

absl::Status FlagError(std::string_view flag, std::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat(ToAbsl(flag), ": ", ToAbsl(message)));
}

absl::StatusOr<int> ParseThreads(std::string_view flag, const std::string& v) {
  int n = 0;
  if (!absl::SimpleAtoi(v, &n) || n < 0 || n > 1024) {
    return FlagError(
        flag,
        absl::StrCat("expected a number from 0 to 1024, got \"", v, "\""));
  }
  return n;
}

// Where a value comes from and what was set, while parsing.
struct Parsing {
  DaemonConfig& c;
  bool cli = false;  // applying command-line flags (else the config file)
  bool default_given = false;
  bool control_given = false;
  bool listen_from_cli = false;
  bool allow_from_cli = false;
};

// Applies one valued flag (or config-file field) to the configuration.
absl::Status ApplyFlag(const std::string& flag, const std::string& value,
                       Parsing& p) {
  DaemonConfig& c = p.c;
  if (flag == "--nbd-listen") {
    absl::StatusOr<ListenAddress> a = ParseListenAddress(value);
    if (!a.ok()) return FlagError(flag, ToStd(a.status().message()));
    if (p.cli && !p.listen_from_cli) {
      c.nbd_listen.clear();  // the command line replaces the file's list
      p.listen_from_cli = true;
    }
    c.nbd_listen.push_back(*a);
  } else if (flag == "--export") {
    absl::StatusOr<ExportConfig> e = ParseExportSpec(value);
    if (!e.ok()) return FlagError(flag, ToStd(e.status().message()));
    c.exports.push_back(*e);
  } else if (flag == "--default-export") {
    c.default_export = value;
    p.default_given = true;
  } else if (flag == "--io-threads") {
    absl::StatusOr<int> n = ParseThreads(flag, value);
    if (!n.ok()) return n.status();
    c.io_threads = *n;
  } else if (flag == "--blocking-threads") {
    absl::StatusOr<int> n = ParseThreads(flag, value);
    if (!n.ok()) return n.status();
    c.blocking_threads = *n;
  } else if (flag == "--drain-timeout") {
    absl::StatusOr<std::chrono::milliseconds> d = ParseDuration(value);
    if (!d.ok()) return FlagError(flag, ToStd(d.status().message()));
    c.drain_timeout = *d;
  } else if (flag == "--log-level") {
    static const std::set<std::string> kLevels = {"trace", "debug", "info",
                                                  "warn", "error"};
    if (!kLevels.contains(value)) {
      return FlagError(flag,
                       absl::StrCat("unknown level \"", value,
                                    "\" (trace, debug, info, warn, error)"));
    }
    c.log_level = value;
  } else if (flag == "--memory-cap") {
    if (value == "none") {
      c.memory_cap_bytes = 0;
    } else if (value == "auto") {
      c.memory_cap_bytes = DefaultMemoryCap();
    } else {
      absl::StatusOr<uint64_t> cap = ParseSize(value);
      if (!cap.ok()) {
        return FlagError(
            flag, absl::StrCat(cap.status().message(), " (or none, auto)"));
      }
      c.memory_cap_bytes = *cap;
    }
  } else if (flag == "--connection-memory") {
    if (value == "none") {
      c.connection_memory_bytes = 0;
    } else {
      absl::StatusOr<uint64_t> n = ParseSize(value);
      if (!n.ok()) {
        return FlagError(flag,
                         absl::StrCat(n.status().message(), " (or none)"));
      }
      c.connection_memory_bytes = *n;
    }
  } else if (flag == "--connection-share") {
    uint32_t n = 0;
    std::string_view v = value;
    if (v.ends_with("%")) v.remove_suffix(1);
    if (!absl::SimpleAtoi(ToAbsl(v), &n) || n < 1 || n > 100) {
      return FlagError(flag, absl::StrCat("expected a percentage from 1 to "
                                          "100, got \"",
                                          value, "\""));
    }
    c.connection_share_percent = n;
  } else if (flag == "--stall-timeout") {
    absl::StatusOr<std::chrono::milliseconds> d = ParseDuration(value);
    if (!d.ok()) return FlagError(flag, ToStd(d.status().message()));
    if (*d > kMaxStallTimeout) return FlagError(flag, "at most 24h");
    c.stall_timeout = *d;
  } else if (flag == "--ready-file") {
    c.ready_file = value;
  } else if (flag == "--control-listen") {
    p.control_given = true;
    if (value == "none") {
      c.control_listen.reset();
    } else {
      absl::StatusOr<ListenAddress> a = ParseListenAddress(value);
      if (!a.ok()) return FlagError(flag, ToStd(a.status().message()));
      c.control_listen = *a;
    }
  } else if (flag == "--control-tls-cert") {
    c.control_tls_cert = value;
  } else if (flag == "--control-tls-key") {
    c.control_tls_key = value;
  } else if (flag == "--control-tls-ca") {
    c.control_tls_ca = value;
  } else if (flag == "--state-dir") {
    if (value != "none" && (value.empty() || value.front() != '/')) {
      return FlagError(flag, "must be an absolute path (or none)");
    }
    c.state_dir = value == "none" ? "" : value;
  } else if (flag == "--allow-path") {
    if (value.empty() || value.front() != '/') {
      return FlagError(
          flag, absl::StrCat("must be an absolute directory: \"", value, "\""));
    }
    if (p.cli && !p.allow_from_cli) {
      c.allow_paths.clear();
      p.allow_from_cli = true;
    }
    c.allow_paths.push_back(value);
  } else if (flag == "--metrics-listen") {
    if (value == "none") {
      c.metrics_listen.clear();
    } else {
      std::string_view v = value;
      if (v.starts_with("tcp:")) v.remove_prefix(4);
      absl::StatusOr<ListenAddress> a =
          ParseListenAddress(absl::StrCat("tcp:", ToAbsl(v)));
      if (!a.ok() || a->host.find(':') != std::string::npos) {
        return FlagError(flag, absl::StrCat("expected HOST:PORT or none, "
                                            "got \"",
                                            value, "\""));
      }
      c.metrics_listen = absl::StrCat(a->host, ":", a->port);
    }
  } else if (flag == "--tls-cert") {
    c.tls.cert_file = value;
  } else if (flag == "--tls-key") {
    c.tls.key_file = value;
  } else if (flag == "--tls-ca") {
    c.tls.ca_file = value;
  } else if (flag == "--tls-psk") {
    c.tls.psk_file = value;
  } else if (flag == "--handshake-timeout" || flag == "--idle-timeout") {
    absl::StatusOr<std::chrono::milliseconds> d = ParseDuration(value);
    if (!d.ok()) return FlagError(flag, ToStd(d.status().message()));
    (flag == "--idle-timeout" ? c.idle_timeout : c.handshake_timeout) = *d;
  } else if (flag == "--max-exports") {
    uint32_t n = 0;
    if (!absl::SimpleAtoi(value, &n) || n == 0 || n > 100000) {
      return FlagError(flag, absl::StrCat("expected a count from 1 to 100000, "
                                          "got \"",
                                          value, "\""));
    }
    c.max_exports = n;
  } else if (flag == "--max-connections") {
    uint32_t n = 0;
    if (!absl::SimpleAtoi(value, &n)) {
      return FlagError(flag,
                       absl::StrCat("expected a count, got \"", value, "\""));
    }
    c.max_connections = n;
  } else if (flag == "--request-stats") {
    if (value != "on" && value != "off") {
      return FlagError(flag,
                       absl::StrCat("expected on or off, got \"", value, "\""));
    }
    c.request_stats = value == "on";
  } else if (flag == "--control-insecure") {
    c.control_insecure = value == "true";
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown flag ", flag, " (see --help)"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string DaemonUsage() {
  return R"(Usage: nbdmgrd [flags]

Serves block devices over the NBD protocol.

Flags:
  --nbd-listen ADDR       Where to accept NBD clients: tcp:HOST:PORT or
                          unix:/PATH. Repeatable. Default tcp:127.0.0.1:10809.
  --export SPEC           An export to serve. Repeatable. SPEC is comma-separated
                          key=value pairs:
                            name=NAME          (required) letters, digits, . _ : -
                            backend=KIND       (required) memory, file or null
                            size=SIZE          e.g. 1GiB; required for memory/null;
                                               for file, creates a missing file
                            path=/FILE         the file or block device (file)
                            read-only=true     refuse writes
                            description=TEXT   shown by nbdinfo --list
                            buffer-strategy=S  pool (default), exact, fixed,
                                               grow or stream
                            memory-cap=SIZE    cap on this export's request
                                               buffers (full: requests stream)
                            stall-timeout=DUR  override --stall-timeout
                            pool-idle-release=DUR  free idle pool buffers after
                                               DUR (default 5s)
                            min-block-size=N, preferred-block-size=N,
                            max-payload=N      advertised block sizes
                                               (defaults 1, 4KiB, 32MiB)
                          Example: --export name=scratch,backend=memory,size=1GiB
  --default-export NAME   Export served to clients that ask for the empty name
                          (nbd://host/). Default: the first --export.
  --memory-cap SIZE|none|auto
                          Daemon-wide cap on request-buffer memory, e.g. 1GiB
                          (default auto: the smaller of 1 GiB and 1/8 of RAM;
                          none: no cap). Requests never wait for it: when it
                          is full they stream through their connection's
                          64 KiB reserve instead.
  --connection-share PCT  The most one connection may hold of the daemon cap
                          and of its export's cap, in percent (default 25).
  --connection-memory SIZE|none
                          The most one connection may hold in buffers and
                          pinned pages at once, cap or not (default 16MiB):
                          what a client that stops moving can hold until the
                          stall timeout drops it. Larger requests stream.
  --stall-timeout DUR     Disconnect a client that stops sending a request's
                          payload, or stops reading replies, for DUR, and
                          free all it held (default 30s; 0 = never; exports
                          may override with stall-timeout=DUR).
  --io-threads N          Network threads (0 = one per core).
  --blocking-threads N    Threads for file I/O (0 = automatic).
  --drain-timeout DUR     On SIGINT/SIGTERM, how long in-flight requests may take
                          to finish before connections are closed. Default 30s.
  --control-listen ADDR   gRPC control API (nbdctl): unix:/PATH (mode 0600) or
                          tcp:HOST:PORT (needs TLS or --control-insecure), or
                          none. Default unix:/run/nbdmgr/control.sock.
  --control-tls-cert F, --control-tls-key F
                          TLS certificate and key for a TCP control address.
  --control-tls-ca F      Require client certificates signed by this CA.
  --control-insecure      Allow a TCP control address without TLS.
  --state-dir DIR         Where exports created over the API are persisted and
                          recreated from at start. Default /var/lib/nbdmgr;
                          none disables persistence.
  --allow-path DIR        File exports created over the API must live under
                          DIR (repeatable; .. and symlink escapes are refused).
  --metrics-listen ADDR   Prometheus metrics at http://ADDR/metrics; ADDR is
                          HOST:PORT or none. Default 127.0.0.1:9810.
  --request-stats on|off  Count requests, bytes and latency per export (on by
                          default; off leaves those counters at zero).
  --tls-cert F, --tls-key F
                          Offer NBD TLS (STARTTLS) with this X.509 certificate
                          (PEM, chain allowed) and key.
  --tls-ca F              Also require client certificates signed by this CA.
  --tls-psk F             Offer TLS with pre-shared keys from this psktool file
                          (IDENTITY:HEXKEY lines); with or without a cert.
                          Exports choose with tls=off|optional|require.
  --handshake-timeout DUR Disconnect clients that have not chosen an export
                          after DUR (default 10s; 0 = never).
  --idle-timeout DUR      Disconnect clients that send no request for DUR while
                          nothing is in flight (default 0 = never).
  --max-connections N     NBD connections at once; more are closed at accept
                          (default 4096; 0 = no cap). Per export: max-clients=N.
  --max-exports N         Exports the daemon holds at most, given, created over
                          the API or FAILED (default 512).
  --log-level LEVEL       trace, debug, info, warn, error. Default info.
  --ready-file PATH       Once serving, write the bound addresses there (one per
                          line; useful with port 0).
  --config FILE           Read settings from FILE (protobuf text format of
                          nbdmgr.v1.DaemonConfig; see deploy/nbdmgrd.conf).
                          Flags override it; --nbd-listen and --allow-path
                          replace its lists, --export adds to its exports.
  --check-config          Validate the configuration (file and flags), print
                          it, and exit (0 if valid, 2 if not).
  --help                  Show this help.
  --version               Show the version.
)";
}

absl::StatusOr<DaemonFlags> ParseDaemonFlags(int argc,
                                             const char* const* argv) {
  DaemonFlags out;
  DaemonConfig& c = out.config;
  Parsing p{c};
  // The config file first; the command line then overrides it.
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string path;
    if (arg == "--config") {
      if (i + 1 >= argc) return FlagError("--config", "missing value");
      path = argv[i + 1];
    } else if (arg.starts_with("--config=")) {
      path = arg.substr(9);
    } else {
      continue;
    }
    if (!out.config_file.empty()) {
      return FlagError("--config", "given more than once");
    }
    out.config_file = path;
    absl::StatusOr<ConfigFileContents> file = LoadConfigFile(path);
    if (!file.ok()) return file.status();
    for (const auto& [flag, value] : file->flags) {
      if (absl::Status st = ApplyFlag(flag, value, p); !st.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": ", st.message()));
      }
    }
    for (ExportConfig& e : file->exports) c.exports.push_back(std::move(e));
  }
  p.cli = true;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      out.help = true;
      continue;
    }
    if (arg == "--version") {
      out.version = true;
      continue;
    }
    if (arg == "--check-config") {
      out.check_config = true;
      continue;
    }
    if (arg == "--control-insecure") {  // the one flag without a value
      c.control_insecure = true;
      continue;
    }
    if (!arg.starts_with("--")) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument \"", arg, "\" (see --help)"));
    }
    std::string flag = arg, value;
    bool has_value = false;
    if (size_t eq = arg.find('='); eq != std::string::npos) {
      flag = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    static const std::set<std::string> kKnown = {"--nbd-listen",
                                                 "--export",
                                                 "--default-export",
                                                 "--io-threads",
                                                 "--blocking-threads",
                                                 "--drain-timeout",
                                                 "--log-level",
                                                 "--ready-file",
                                                 "--memory-cap",
                                                 "--control-listen",
                                                 "--control-tls-cert",
                                                 "--control-tls-key",
                                                 "--control-tls-ca",
                                                 "--state-dir",
                                                 "--allow-path",
                                                 "--metrics-listen",
                                                 "--request-stats",
                                                 "--tls-cert",
                                                 "--tls-key",
                                                 "--tls-ca",
                                                 "--tls-psk",
                                                 "--handshake-timeout",
                                                 "--idle-timeout",
                                                 "--max-connections",
                                                 "--max-exports",
                                                 "--stall-timeout",
                                                 "--connection-share",
                                                 "--connection-memory",
                                                 "--config"};
    if (!kKnown.contains(flag)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag ", flag, " (see --help)"));
    }
    if (!has_value) {
      if (i + 1 >= argc) return FlagError(flag, "missing value");
      value = argv[++i];
    }
    if (flag == "--config") continue;  // loaded above
    if (absl::Status st = ApplyFlag(flag, value, p); !st.ok()) return st;
  }
  const bool default_given = p.default_given;
  const bool control_given = p.control_given;
  if (!control_given) {
    c.control_listen = *ParseListenAddress("unix:/run/nbdmgr/control.sock");
  }
  if (c.control_listen && c.control_listen->kind == ListenAddress::Kind::kTcp &&
      c.control_tls_cert.empty() && !c.control_insecure) {
    return FlagError("--control-listen",
                     "a TCP control address needs --control-tls-cert and "
                     "--control-tls-key (or --control-insecure)");
  }
  if (!c.tls.empty() || !c.tls.key_file.empty() || !c.tls.ca_file.empty()) {
    if (c.tls.cert_file.empty() != c.tls.key_file.empty()) {
      return FlagError("--tls-cert", "--tls-cert and --tls-key go together");
    }
    if (!c.tls.ca_file.empty() && c.tls.cert_file.empty()) {
      return FlagError("--tls-ca", "needs --tls-cert and --tls-key");
    }
  }
  for (const ExportConfig& e : c.exports) {
    if (e.tls != TlsMode::kOff && c.tls.empty()) {
      return FlagError(
          "--export",
          absl::StrCat("export \"", e.name,
                       "\" has tls=", ToAbsl(NameOf(e.tls)),
                       ", which needs --tls-cert/--tls-key or --tls-psk"));
    }
  }
  if (c.nbd_listen.empty()) {
    c.nbd_listen.push_back(*ParseListenAddress("tcp:127.0.0.1:10809"));
  }
  if (c.exports.size() > c.max_exports) {
    return FlagError("--export", absl::StrCat(c.exports.size(),
                                              " exports given, more than "
                                              "--max-exports ",
                                              c.max_exports));
  }
  std::set<std::string> names;
  for (const ExportConfig& e : c.exports) {
    if (!names.insert(e.name).second) {
      return FlagError("--export", absl::StrCat("export \"", e.name,
                                                "\" is declared twice"));
    }
  }
  if (default_given) {
    if (!c.default_export.empty() && !names.contains(c.default_export)) {
      return FlagError(
          "--default-export",
          absl::StrCat("no --export named \"", c.default_export, "\""));
    }
  } else if (!c.exports.empty()) {
    c.default_export = c.exports.front().name;
  }
  return out;
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
         absl::StrCat(e.name, " (", ToAbsl(NameOf(e.backend)),
                      e.path.empty() ? "" : " ", e.path,
                      e.size ? absl::StrCat(" ", FormatSize(*e.size)) : "",
                      e.read_only ? ", read-only" : "",
                      e.tls != TlsMode::kOff
                          ? absl::StrCat(", tls=", ToAbsl(NameOf(e.tls)))
                          : "",
                      e.name == c.default_export ? ", default" : "", ")"));
  }
  return out;
}

}  // namespace nbdmgr
