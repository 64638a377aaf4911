// nbdctl stats.

#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "lib/convert/proto_convert.h"
#include "lib/convert/stats_convert.h"
#include "lib/metrics/exposition.h"
#include "lib/util/duration.h"
#include "lib/util/size.h"
#include "lib/util/strings.h"
#include "nbdmgr/v1/stats.grpc.pb.h"

namespace nbdmgr::cli {
namespace {

constexpr char kStatsDescription[] =
    R"(Shows I/O rates, latency and buffers.
Shows the live counters of every export (or of NAME) and of the daemon,
in the format the global -o flag names:
  -o table       (default) per export: IOPS and MB/s read and written,
                 errors per second (all, and those the backend returned),
                 requests in flight, mean latency,
                 buffer memory and cap-full counts, as rates between two samples
                 taken --watch apart (1s if not given); for exports with QoS
                 limits and for QoS groups, requests throttled per second,
                 seconds waited per second, and requests waiting now
  -o json        the raw counters (nbdmgr.v1.Stats) as JSON
  -o prometheus  the raw counters in Prometheus text format, as /metrics)";

struct StatsFlags {
  std::string name;  // "" for every export
  std::optional<std::string> watch, count;
};

// What the flags ask for, checked.
struct StatsPlan {
  std::string output;
  std::chrono::milliseconds interval{1000};
  long count = 1;  // -1: until interrupted
};

struct Rates {
  double read_iops = 0, write_iops = 0, other_iops = 0;
  double read_mbps = 0, write_mbps = 0;
  double errors_per_s = 0;
  double backend_errors_per_s = 0;  // of errors_per_s, the backend's
  double mean_latency_ms = 0;       // over requests answered in the interval
};

Rates RatesBetween(const IoCounts& a, const IoCounts& b, double seconds) {
  Rates r;
  if (seconds <= 0) return r;
  auto delta = [](uint64_t x, uint64_t y) {
    return static_cast<double>(y >= x ? y - x : 0);
  };
  const double reads =
      delta(a.total_requests(IoOp::kRead), b.total_requests(IoOp::kRead));
  const double writes =
      delta(a.total_requests(IoOp::kWrite), b.total_requests(IoOp::kWrite));
  const double all = delta(a.total_requests(), b.total_requests());
  r.read_iops = reads / seconds;
  r.write_iops = writes / seconds;
  r.other_iops = (all - reads - writes) / seconds;
  r.read_mbps = delta(a.bytes_read, b.bytes_read) / seconds / 1e6;
  r.write_mbps = delta(a.bytes_written, b.bytes_written) / seconds / 1e6;
  r.errors_per_s = delta(a.errors(), b.errors()) / seconds;
  r.backend_errors_per_s =
      delta(a.backend_errors_total(), b.backend_errors_total()) / seconds;
  if (all > 0) {
    r.mean_latency_ms =
        delta(a.total_latency_ns(), b.total_latency_ns()) / all / 1e6;
  }
  return r;
}

// Throttled requests and the time they waited, per second between `a`
// and `b`, then the totals and what waits now.
void PrintQosRow(const char* name, const std::string& extra, const QosCounts& a,
                 const QosCounts& b, double seconds) {
  auto per_second = [seconds](uint64_t x, uint64_t y) {
    return seconds > 0 && y >= x ? static_cast<double>(y - x) / seconds : 0.0;
  };
  std::printf("%-16s %-16s %12.1f %10.3f %12llu %11.3f %7llu\n", name,
              extra.c_str(),
              per_second(a.throttled_requests, b.throttled_requests),
              per_second(a.throttled_ns, b.throttled_ns) / 1e9,
              static_cast<unsigned long long>(b.throttled_requests),
              static_cast<double>(b.throttled_ns) / 1e9,
              static_cast<unsigned long long>(b.waiting));
}

// The QoS sections: exports with limits (or that were throttled), and
// the QoS groups; nothing if there are neither.
void PrintQos(const StatsSnapshot& before, const StatsSnapshot& now,
              double seconds) {
  bool header = false;
  for (const ExportStats& e : now.exports) {
    if (e.failed || (!e.qos.limited && e.qos.throttled_requests == 0)) {
      continue;
    }
    if (!header) {
      std::printf("%-16s %-16s %12s %10s %12s %11s %7s\n", "QOS EXPORT",
                  "GROUP", "THROTTLED/s", "WAITED s/s", "THROTTLED", "WAITED s",
                  "WAITING");
      header = true;
    }
    QosCounts prev;
    for (const ExportStats& b : before.exports) {
      if (b.name == e.name) prev = b.qos;
    }
    PrintQosRow(e.name.c_str(), e.qos.group.empty() ? "-" : e.qos.group, prev,
                e.qos, seconds);
  }
  if (now.qos_groups.empty()) return;
  std::printf("%-16s %-16s %12s %10s %12s %11s %7s\n", "QOS GROUP", "MEMBERS",
              "THROTTLED/s", "WAITED s/s", "THROTTLED", "WAITED s", "WAITING");
  for (const QosGroupStats& g : now.qos_groups) {
    QosCounts prev;
    for (const QosGroupStats& b : before.qos_groups) {
      if (b.name == g.name) prev = b.qos;
    }
    PrintQosRow(g.name.c_str(), absl::StrCat(g.members), prev, g.qos, seconds);
  }
}

void PrintTable(const StatsSnapshot& before, const StatsSnapshot& now) {
  const double seconds =
      static_cast<double>(now.time_ns - before.time_ns) / 1e9;
  std::printf("%-16s %7s %9s %9s %8s %8s %7s %8s %7s %8s %10s %9s\n", "EXPORT",
              "CLIENTS", "READ/s", "WRITE/s", "RD MB/s", "WR MB/s", "ERR/s",
              "BE-ERR/s", "INFLT", "LAT ms", "BUF USED", "CAP FULL");
  for (const ExportStats& e : now.exports) {
    if (e.failed) {
      std::printf("%-16s FAILED, not served: %s\n", e.name.c_str(),
                  e.failure.c_str());
      continue;
    }
    IoCounts prev;  // an export new since `before` starts from zero
    for (const ExportStats& b : before.exports) {
      if (b.name == e.name) prev = b.io;
    }
    Rates r = RatesBetween(prev, e.io, seconds);
    std::printf(
        "%-16s %7llu %9.0f %9.0f %8.1f %8.1f %7.1f %8.1f %7llu %8.3f %10s "
        "%9llu\n",
        e.name.c_str(), static_cast<unsigned long long>(e.clients), r.read_iops,
        r.write_iops, r.read_mbps, r.write_mbps, r.errors_per_s,
        r.backend_errors_per_s, static_cast<unsigned long long>(e.io.in_flight),
        r.mean_latency_ms, FormatSize(e.buffers.bytes_in_use).c_str(),
        static_cast<unsigned long long>(e.buffers.cap_full));
  }
  PrintQos(before, now, seconds);
  const DaemonStats& d = now.daemon;
  uint64_t open = 0;
  for (uint64_t c : d.server.connections) open += c;
  std::printf(
      "daemon: %llu connections, buffers %s in use + %s pooled (cap %s), "
      "%s reserves, %s TLS, %llu cap full, RSS %s   [%.1fs interval]\n",
      static_cast<unsigned long long>(open),
      FormatSize(d.buffers.bytes_in_use).c_str(),
      FormatSize(d.buffers.bytes_cached).c_str(),
      d.buffers.cap_bytes ? FormatSize(d.buffers.cap_bytes).c_str() : "none",
      FormatSize(d.buffers.reserve_bytes).c_str(),
      FormatSize(d.buffers.tls_bytes).c_str(),
      static_cast<unsigned long long>(d.buffers.cap_full),
      FormatSize(d.resident_memory_bytes).c_str(), seconds);
}

// Checks the flags; returns a usage message or "".
std::string Plan(const Global& g, const StatsFlags& f, StatsPlan* plan) {
  plan->output = g.output;
  if (g.output != "table" && g.output != "json" && g.output != "prometheus") {
    return "-o must be table, json or prometheus";
  }
  if (f.watch) {
    auto d = ParseDuration(*f.watch);
    if (!d.ok() || d->count() <= 0) {
      return "--watch: expected a positive duration such as 1s";
    }
    plan->interval = *d;
    plan->count = -1;
  }
  if (f.count) {
    if (!absl::SimpleAtoi(*f.count, &plan->count) || plan->count <= 0) {
      return "--count: expected a positive number";
    }
  }
  return "";
}

int RunStats(const Global& g, const StatsFlags& f, const CLI::App& cmd) {
  StatsPlan plan;
  if (std::string m = Plan(g, f, &plan); !m.empty()) {
    return UsageError(m, HelpOf(cmd));
  }
  std::string error;
  auto channel = Connect(g, &error);
  if (channel == nullptr)
    return UsageError(absl::StrCat("--control: ", error), "");
  auto stub = v1::StatsService::NewStub(channel);
  v1::GetStatsRequest req;
  if (!f.name.empty()) req.set_name(ExportResourceName(f.name));
  auto sample = [&](v1::Stats* out) {
    return stub->GetStats(Context().get(), req, out);
  };

  const std::string& output = plan.output;
  v1::Stats prev;
  if (output == "table") {
    // Rates need a first sample to measure from.
    if (grpc::Status s = sample(&prev); !s.ok()) return ReportError(s);
  }
  for (long n = 0; plan.count < 0 || n < plan.count; ++n) {
    if (output == "table" || n > 0) std::this_thread::sleep_for(plan.interval);
    v1::Stats now;
    if (grpc::Status s = sample(&now); !s.ok()) return ReportError(s);
    if (output == "json") {
      std::printf("%s", ToJson(now).c_str());
    } else if (output == "prometheus") {
      std::printf("%s", ToPrometheusText(StatsFromProto(now)).c_str());
    } else {
      if (n > 0) std::printf("\n");
      PrintTable(StatsFromProto(prev), StatsFromProto(now));
      prev = now;
    }
    std::fflush(stdout);
  }
  return kExitOk;
}

}  // namespace

Command AddStatsCommand(CLI::App& app, const Global& g) {
  CLI::App* cmd = AddSubcommand(app, "stats", kStatsDescription);
  auto f = std::make_shared<StatsFlags>();
  cmd->add_option("NAME", f->name, "one export (default: all)")->type_name("");
  AddOptional(cmd, "--watch", "DUR", &f->watch,
              "keep reporting every DUR (e.g. 1s, 500ms) until\n"
              "interrupted");
  AddOptional(cmd, "--count", "N", &f->count, "stop after N reports");
  return {cmd, [&g, f, cmd] { return RunStats(g, *f, *cmd); }};
}

}  // namespace nbdmgr::cli
