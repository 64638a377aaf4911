// nbdctl create | list | get | update | remove.

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "lib/buffer/buffer_policy.h"
#include "lib/control/proto_convert.h"
#include "lib/util/duration.h"
#include "lib/util/size.h"
#include "nbdmgr/v1/export.grpc.pb.h"

namespace nbdmgr::cli {
namespace {

constexpr char kCreateHelp[] =
    R"(Usage: nbdctl create NAME (--memory SIZE | --null SIZE | --file PATH [--size SIZE])
                    [--read-only] [--description TEXT] [--buffer-strategy S]
                    [--memory-cap SIZE] [--pool-idle-release DUR]
                    [--tls off|optional|require] [--max-clients N]
                    [--stall-timeout DUR|default]
                    [--min-block-size N] [--preferred-block-size N] [--max-payload N]

Creates an export and starts serving it. It is persisted in the daemon's state
directory and recreated when the daemon restarts.
  --memory SIZE           sparse RAM disk of SIZE (e.g. 1GiB)
  --null SIZE             discards writes, reads zeroes
  --file PATH             a file or block device under the daemon's --allow-path;
                          with --size, created (sparse) if missing
  --buffer-strategy S     pool (default), exact, fixed, grow, stream
  --memory-cap SIZE       cap on this export's request buffers
  --pool-idle-release DUR free idle pool buffers after DUR (e.g. 5s)
  --tls MODE              off (default), optional, or require: clients must
                          start TLS first (the daemon needs TLS credentials)
  --max-clients N         connected clients at once (0 = no cap)
  --stall-timeout DUR     disconnect a client that stops sending a payload or
                          reading replies for DUR (0 = never; default: the
                          daemon's --stall-timeout)
  --min-block-size N, --preferred-block-size N, --max-payload N
                          block sizes advertised to clients (defaults 1, 4KiB,
                          32MiB); unaligned READ/WRITE get EINVAL
)";
constexpr char kListHelp[] = "Usage: nbdctl list\n\nLists every export.\n";
constexpr char kGetHelp[] = "Usage: nbdctl get NAME\n\nShows one export.\n";
constexpr char kUpdateHelp[] =
    R"(Usage: nbdctl update NAME [--buffer-strategy S] [--memory-cap SIZE]
                    [--pool-idle-release DUR] [--description TEXT]
                    [--tls off|optional|require] [--max-clients N]
                    [--stall-timeout DUR|default] [--retry]

Changes a live export. New requests use the new buffer settings; requests in
flight finish with theirs; --tls and --max-clients apply to new clients; no
client is disconnected. The change is saved before it is applied.
  --retry        reopen a FAILED export (one whose file could not be opened at
                 start) after fixing the cause; it is served once that works
)";
constexpr char kRemoveHelp[] =
    R"(Usage: nbdctl remove NAME [--mode safe|drain|hard] [--timeout DUR]

Removes an export.
  --mode safe    (default) refuse while clients are connected
  --mode drain   refuse new clients, let connected ones finish their in-flight
                 requests, flush, then close them (forcibly at --timeout)
  --mode hard    flush what was acknowledged, then close connections now
  --timeout DUR  deadline for drain (default 30s)
)";

// Applies the buffer and description flags shared by create and update;
// records the field-mask paths it set. Returns a usage message or "".
std::string ApplyCommonFlags(const Args& a, v1::Export* e,
                             std::vector<std::string>* paths) {
  if (a.has("--description")) {
    e->set_description(a.get("--description"));
    paths->push_back("description");
  }
  if (a.has("--buffer-strategy")) {
    auto s = ParseBufferStrategy(a.get("--buffer-strategy"));
    if (!s.ok()) return std::string(s.status().message());
    e->set_buffer_strategy(StrategyToProto(*s));
    paths->push_back("buffer_strategy");
  }
  if (a.has("--memory-cap")) {
    auto cap = ParseSize(a.get("--memory-cap"));
    if (!cap.ok())
      return absl::StrCat("--memory-cap: ", cap.status().message());
    e->set_memory_cap_bytes(*cap);
    paths->push_back("memory_cap_bytes");
  }
  if (a.has("--pool-idle-release")) {
    auto d = ParseDuration(a.get("--pool-idle-release"));
    if (!d.ok())
      return absl::StrCat("--pool-idle-release: ", d.status().message());
    *e->mutable_pool_idle_release() = DurationToProto(*d);
    paths->push_back("pool_idle_release");
  }
  if (a.has("--tls")) {
    auto m = ParseTlsMode(a.get("--tls"));
    if (!m.ok()) return absl::StrCat("--tls: ", m.status().message());
    e->set_tls(TlsModeToProto(*m));
    paths->push_back("tls");
  }
  if (a.has("--max-clients")) {
    uint32_t n = 0;
    if (!absl::SimpleAtoi(a.get("--max-clients"), &n)) {
      return "--max-clients: expected a count";
    }
    e->set_max_clients(n);
    paths->push_back("max_clients");
  }
  if (a.has("--stall-timeout")) {
    if (a.get("--stall-timeout") != "default") {
      auto d = ParseDuration(a.get("--stall-timeout"));
      if (!d.ok())
        return absl::StrCat("--stall-timeout: ", d.status().message());
      *e->mutable_stall_timeout() = DurationToProto(*d);
    }
    paths->push_back("stall_timeout");
  }
  return "";
}

std::string BackendText(const v1::Export& e) {
  switch (e.backend_case()) {
    case v1::Export::kMemory:
      return "memory";
    case v1::Export::kNull:
      return "null";
    case v1::Export::kFile:
      return absl::StrCat("file:", e.file().path());
    default:
      return "?";
  }
}

std::string StrategyText(v1::BufferStrategy s) {
  auto d = StrategyFromProto(s);
  return d.ok() ? std::string(NameOf(*d)) : "?";
}

std::string StateText(const v1::Export& e) {
  switch (e.state()) {
    case v1::Export::STATE_DRAINING:
      return "draining";
    case v1::Export::STATE_FAILED:
      return "FAILED";
    default:
      return e.read_only() ? "active,ro" : "active";
  }
}

void PrintTable(const std::vector<const v1::Export*>& exports) {
  std::printf("%-24s %-28s %10s %7s %-8s %10s %-8s\n", "NAME", "BACKEND",
              "SIZE", "CLIENTS", "BUFFERS", "MEM CAP", "STATE");
  for (const v1::Export* e : exports) {
    std::string id = e->name().substr(e->name().find('/') + 1);
    std::printf(
        "%-24s %-28s %10s %7u %-8s %10s %-8s\n", id.c_str(),
        BackendText(*e).c_str(), FormatSize(e->size_bytes()).c_str(),
        e->connected_clients(), StrategyText(e->buffer_strategy()).c_str(),
        e->memory_cap_bytes() ? FormatSize(e->memory_cap_bytes()).c_str() : "-",
        StateText(*e).c_str());
  }
  for (const v1::Export* e : exports) {
    if (e->state() == v1::Export::STATE_FAILED) {
      std::string id = e->name().substr(e->name().find('/') + 1);
      std::printf("%s: FAILED: %s\n", id.c_str(), e->failure().c_str());
    }
  }
}

void PrintOne(const Global& g, const v1::Export& e) {
  if (g.output == "json") {
    std::printf("%s", ToJson(e).c_str());
  } else {
    PrintTable({&e});
  }
}

std::unique_ptr<v1::ExportService::Stub> Stub(const Global& g, int* exit_code) {
  std::string error;
  auto channel = Connect(g, &error);
  if (channel == nullptr) {
    *exit_code = UsageError(absl::StrCat("--control: ", error), "");
    return nullptr;
  }
  return v1::ExportService::NewStub(channel);
}

}  // namespace

int CreateCommand(const Global& g, const std::vector<std::string>& words) {
  auto a =
      ParseArgs(words,
                {"--memory", "--null", "--file", "--size", "--description",
                 "--buffer-strategy", "--memory-cap", "--pool-idle-release",
                 "--tls", "--max-clients", "--stall-timeout",
                 "--min-block-size", "--preferred-block-size", "--max-payload"},
                {"--read-only"});
  if (!a.ok())
    return UsageError(std::string(a.status().message()), kCreateHelp);
  if (a->help) return std::printf("%s", kCreateHelp), kExitOk;
  if (a->positional.size() != 1)
    return UsageError("create takes one NAME", kCreateHelp);
  int backends = a->has("--memory") + a->has("--null") + a->has("--file");
  if (backends != 1) {
    return UsageError("give exactly one of --memory, --null, --file",
                      kCreateHelp);
  }
  v1::CreateExportRequest req;
  req.set_export_id(a->positional[0]);
  v1::Export* e = req.mutable_export_();
  e->set_read_only(a->has("--read-only"));
  auto size_of = [&](const std::string& flag, uint64_t* out) -> std::string {
    auto s = ParseSize(a->get(flag));
    if (!s.ok()) return absl::StrCat(flag, ": ", s.status().message());
    *out = *s;
    return "";
  };
  uint64_t size = 0;
  std::string err;
  if (a->has("--memory")) {
    err = size_of("--memory", &size);
    e->mutable_memory()->set_size_bytes(size);
  } else if (a->has("--null")) {
    err = size_of("--null", &size);
    e->mutable_null()->set_size_bytes(size);
  } else {
    e->mutable_file()->set_path(a->get("--file"));
    if (a->has("--size")) {
      err = size_of("--size", &size);
      e->mutable_file()->set_size_bytes(size);
      e->mutable_file()->set_create(true);
    }
  }
  if (!err.empty()) return UsageError(err, kCreateHelp);
  for (const char* flag :
       {"--min-block-size", "--preferred-block-size", "--max-payload"}) {
    if (!a->has(flag)) continue;
    uint64_t v = 0;
    if (std::string m = size_of(flag, &v); !m.empty())
      return UsageError(m, kCreateHelp);
    if (v > UINT32_MAX)
      return UsageError(absl::StrCat(flag, ": too large"), kCreateHelp);
    v1::BlockSizes* b = e->mutable_block_sizes();
    std::string f = flag;
    if (f == "--min-block-size")
      b->set_minimum(static_cast<uint32_t>(v));
    else if (f == "--preferred-block-size")
      b->set_preferred(static_cast<uint32_t>(v));
    else
      b->set_maximum_payload(static_cast<uint32_t>(v));
  }
  std::vector<std::string> paths;
  if (std::string m = ApplyCommonFlags(*a, e, &paths); !m.empty()) {
    return UsageError(m, kCreateHelp);
  }
  int code = kExitOk;
  auto stub = Stub(g, &code);
  if (!stub) return code;
  v1::Export out;
  grpc::Status s = stub->CreateExport(Context().get(), req, &out);
  if (!s.ok()) return ReportError(s);
  PrintOne(g, out);
  return kExitOk;
}

int ListCommand(const Global& g, const std::vector<std::string>& words) {
  auto a = ParseArgs(words, {}, {});
  if (!a.ok()) return UsageError(std::string(a.status().message()), kListHelp);
  if (a->help) return std::printf("%s", kListHelp), kExitOk;
  if (!a->positional.empty())
    return UsageError("list takes no arguments", kListHelp);
  int code = kExitOk;
  auto stub = Stub(g, &code);
  if (!stub) return code;
  v1::ListExportsResponse all;
  std::string token;
  do {
    v1::ListExportsRequest req;
    req.set_page_size(1000);
    req.set_page_token(token);
    v1::ListExportsResponse page;
    grpc::Status s = stub->ListExports(Context().get(), req, &page);
    if (!s.ok()) return ReportError(s);
    for (auto& e : *page.mutable_exports()) *all.add_exports() = std::move(e);
    token = page.next_page_token();
  } while (!token.empty());
  if (g.output == "json") {
    std::printf("%s", ToJson(all).c_str());
  } else {
    std::vector<const v1::Export*> rows;
    for (const auto& e : all.exports()) rows.push_back(&e);
    PrintTable(rows);
  }
  return kExitOk;
}

int GetCommand(const Global& g, const std::vector<std::string>& words) {
  auto a = ParseArgs(words, {}, {});
  if (!a.ok()) return UsageError(std::string(a.status().message()), kGetHelp);
  if (a->help) return std::printf("%s", kGetHelp), kExitOk;
  if (a->positional.size() != 1)
    return UsageError("get takes one NAME", kGetHelp);
  int code = kExitOk;
  auto stub = Stub(g, &code);
  if (!stub) return code;
  v1::GetExportRequest req;
  req.set_name(ExportResourceName(a->positional[0]));
  v1::Export out;
  grpc::Status s = stub->GetExport(Context().get(), req, &out);
  if (!s.ok()) return ReportError(s);
  PrintOne(g, out);
  return kExitOk;
}

int UpdateCommand(const Global& g, const std::vector<std::string>& words) {
  auto a = ParseArgs(
      words,
      {"--description", "--buffer-strategy", "--memory-cap",
       "--pool-idle-release", "--tls", "--max-clients", "--stall-timeout"},
      {"--retry"});
  if (!a.ok())
    return UsageError(std::string(a.status().message()), kUpdateHelp);
  if (a->help) return std::printf("%s", kUpdateHelp), kExitOk;
  if (a->positional.size() != 1)
    return UsageError("update takes one NAME", kUpdateHelp);
  v1::UpdateExportRequest req;
  req.mutable_export_()->set_name(ExportResourceName(a->positional[0]));
  std::vector<std::string> paths;
  if (std::string m = ApplyCommonFlags(*a, req.mutable_export_(), &paths);
      !m.empty()) {
    return UsageError(m, kUpdateHelp);
  }
  req.set_retry(a->has("--retry"));
  if (paths.empty() && !req.retry()) {
    return UsageError("nothing to update", kUpdateHelp);
  }
  for (const auto& p : paths) req.mutable_update_mask()->add_paths(p);
  int code = kExitOk;
  auto stub = Stub(g, &code);
  if (!stub) return code;
  v1::Export out;
  grpc::Status s = stub->UpdateExport(Context().get(), req, &out);
  if (!s.ok()) return ReportError(s);
  PrintOne(g, out);
  return kExitOk;
}

int RemoveCommand(const Global& g, const std::vector<std::string>& words) {
  auto a = ParseArgs(words, {"--mode", "--timeout"}, {});
  if (!a.ok())
    return UsageError(std::string(a.status().message()), kRemoveHelp);
  if (a->help) return std::printf("%s", kRemoveHelp), kExitOk;
  if (a->positional.size() != 1)
    return UsageError("remove takes one NAME", kRemoveHelp);
  v1::DeleteExportRequest req;
  req.set_name(ExportResourceName(a->positional[0]));
  std::string mode = a->get("--mode", "safe");
  if (mode == "safe")
    req.set_mode(v1::DELETE_MODE_SAFE);
  else if (mode == "drain")
    req.set_mode(v1::DELETE_MODE_DRAIN);
  else if (mode == "hard")
    req.set_mode(v1::DELETE_MODE_HARD);
  else
    return UsageError("--mode must be safe, drain or hard", kRemoveHelp);
  int timeout_s = 30;
  if (a->has("--timeout")) {
    auto d = ParseDuration(a->get("--timeout"));
    if (!d.ok())
      return UsageError(absl::StrCat("--timeout: ", d.status().message()),
                        kRemoveHelp);
    *req.mutable_timeout() = DurationToProto(*d);
    timeout_s = static_cast<int>(d->count() / 1000);
  }
  int code = kExitOk;
  auto stub = Stub(g, &code);
  if (!stub) return code;
  v1::DeleteExportResponse out;
  grpc::Status s = stub->DeleteExport(Context(timeout_s + 30).get(), req, &out);
  if (!s.ok()) return ReportError(s);
  if (g.output == "json") {
    std::printf("%s", ToJson(out).c_str());
  } else {
    std::printf("removed %s (%u connection(s) closed)\n",
                a->positional[0].c_str(), out.closed_clients());
  }
  return kExitOk;
}

}  // namespace nbdmgr::cli
