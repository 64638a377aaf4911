// nbdctl create | list | get | update | remove.

#include <cstdio>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/qos_flags.h"
#include "lib/backend/file_backend.h"
#include "lib/buffer/buffer_policy.h"
#include "lib/convert/proto_convert.h"
#include "lib/util/duration.h"
#include "lib/util/size.h"
#include "nbdmgr/v1/export.grpc.pb.h"

namespace nbdmgr::cli {
namespace {

// The flags create and update share; an unset one leaves its field alone.
struct CommonFlags {
  std::optional<std::string> description, buffer_strategy, memory_cap,
      pool_idle_release, tls, max_clients, stall_timeout;
  QosFlags qos;
  std::optional<std::string> qos_group;
};

struct CreateFlags {
  std::string name;
  std::optional<std::string> memory, null, file, size, io;
  std::optional<std::string> overlay_of, cluster_size;
  std::optional<std::string> rbd, rbd_namespace, ceph_conf, ceph_user;
  bool take_over = false;
  bool read_only = false;
  CommonFlags common;
  std::optional<std::string> min_block_size, preferred_block_size, max_payload;
};

struct UpdateFlags {
  std::string name;
  CommonFlags common;
  bool retry = false;
};

struct RemoveFlags {
  std::string name;
  std::string mode = "safe";
  std::optional<std::string> timeout;
};

void AddCommonFlags(CLI::App* cmd, CommonFlags* f) {
  AddOptional(cmd, "--description", "TEXT", &f->description,
              "free text kept with the export");
  AddOptional(cmd, "--buffer-strategy", "S", &f->buffer_strategy,
              "pool (default), exact, fixed, grow, stream");
  AddOptional(cmd, "--memory-cap", "SIZE", &f->memory_cap,
              "cap on this export's request buffers");
  AddOptional(cmd, "--pool-idle-release", "DUR", &f->pool_idle_release,
              "free idle pool buffers after DUR (e.g. 5s)");
  AddOptional(cmd, "--tls", "MODE", &f->tls,
              "off (default), optional, or require: clients must\n"
              "start TLS first (the daemon needs TLS credentials)");
  AddOptional(cmd, "--max-clients", "N", &f->max_clients,
              "connected clients at once (0 = no cap)");
  AddOptional(cmd, "--stall-timeout", "DUR", &f->stall_timeout,
              "disconnect a client that stops sending a payload\n"
              "or reading replies for DUR (0 = never; 'default':\n"
              "the daemon's --stall-timeout)");
  AddQosFlags(cmd, &f->qos);
  AddOptional(cmd, "--qos-group", "NAME", &f->qos_group,
              "share the limits of this QoS group (see\n"
              "'nbdctl qos-group'); \"\" = leave the group");
}

// Applies the common flags to `e`; records the field-mask paths it set.
// Returns a usage message or "".
std::string ApplyCommonFlags(const CommonFlags& f, v1::Export* e,
                             std::vector<std::string>* paths) {
  if (f.description) {
    e->set_description(*f.description);
    paths->push_back("description");
  }
  if (f.buffer_strategy) {
    auto s = ParseBufferStrategy(*f.buffer_strategy);
    if (!s.ok()) return std::string(s.status().message());
    e->set_buffer_strategy(StrategyToProto(*s));
    paths->push_back("buffer_strategy");
  }
  if (f.memory_cap) {
    auto cap = ParseSize(*f.memory_cap);
    if (!cap.ok())
      return absl::StrCat("--memory-cap: ", cap.status().message());
    e->set_memory_cap_bytes(*cap);
    paths->push_back("memory_cap_bytes");
  }
  if (f.pool_idle_release) {
    auto d = ParseDuration(*f.pool_idle_release);
    if (!d.ok())
      return absl::StrCat("--pool-idle-release: ", d.status().message());
    *e->mutable_pool_idle_release() = DurationToProto(*d);
    paths->push_back("pool_idle_release");
  }
  if (f.tls) {
    auto m = ParseTlsMode(*f.tls);
    if (!m.ok()) return absl::StrCat("--tls: ", m.status().message());
    e->set_tls(TlsModeToProto(*m));
    paths->push_back("tls");
  }
  if (f.max_clients) {
    uint32_t n = 0;
    if (!absl::SimpleAtoi(*f.max_clients, &n)) {
      return "--max-clients: expected a count";
    }
    e->set_max_clients(n);
    paths->push_back("max_clients");
  }
  if (f.stall_timeout) {
    if (*f.stall_timeout != "default") {
      auto d = ParseDuration(*f.stall_timeout);
      if (!d.ok())
        return absl::StrCat("--stall-timeout: ", d.status().message());
      *e->mutable_stall_timeout() = DurationToProto(*d);
    }
    paths->push_back("stall_timeout");
  }
  if (std::string m = ApplyQosFlags(f.qos, "qos", e->mutable_qos(), paths);
      !m.empty()) {
    return m;
  }
  if (f.qos_group) {
    e->set_qos_group(f.qos_group->empty() ? ""
                                          : QosGroupResourceName(*f.qos_group));
    paths->push_back("qos_group");
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
    case v1::Export::kRbd: {
      const v1::RbdBackend& r = e.rbd();
      std::string text = absl::StrCat("rbd:", r.pool(), "/");
      if (!r.namespace_().empty()) absl::StrAppend(&text, r.namespace_(), "/");
      absl::StrAppend(&text, r.image());
      if (!r.snapshot().empty()) absl::StrAppend(&text, "@", r.snapshot());
      return text;
    }
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

// After the table: what an overlay holds, and that a base is read-only.
void PrintOverlayLines(const v1::Export& e) {
  const std::string id = ResourceId(e.name());
  if (e.has_file() && !e.file().base().empty()) {
    std::printf("%s: overlay of %s", id.c_str(), e.file().base().c_str());
    if (e.has_overlay()) {
      const v1::OverlayStatus& o = e.overlay();
      std::printf(": cluster %s, allocated %s, zeroed %s, %llu copy-ups",
                  FormatSize(o.cluster_size_bytes()).c_str(),
                  FormatSize(o.allocated_bytes()).c_str(),
                  FormatSize(o.zero_bytes()).c_str(),
                  static_cast<unsigned long long>(o.copy_ups()));
    }
    std::printf("\n");
  }
  if (e.overlays() > 0) {
    std::printf("%s: base of %u overlay(s): served read-only\n", id.c_str(),
                e.overlays());
  }
}

void PrintTable(const std::vector<const v1::Export*>& exports) {
  std::printf("%-24s %-28s %-8s %10s %7s %-8s %10s %-8s\n", "NAME", "BACKEND",
              "IO", "SIZE", "CLIENTS", "BUFFERS", "MEM CAP", "STATE");
  for (const v1::Export* e : exports) {
    std::printf(
        "%-24s %-28s %-8s %10s %7u %-8s %10s %-8s\n",
        ResourceId(e->name()).c_str(), BackendText(*e).c_str(),
        e->io_engine().empty() ? "-" : e->io_engine().c_str(),
        FormatSize(e->size_bytes()).c_str(), e->connected_clients(),
        StrategyText(e->buffer_strategy()).c_str(),
        e->memory_cap_bytes() ? FormatSize(e->memory_cap_bytes()).c_str() : "-",
        StateText(*e).c_str());
  }
  for (const v1::Export* e : exports) {
    if (e->state() == v1::Export::STATE_FAILED) {
      std::printf("%s: FAILED: %s\n", ResourceId(e->name()).c_str(),
                  e->failure().c_str());
    }
  }
  for (const v1::Export* e : exports) {
    if (e->has_rbd() && !e->rbd().lock_owner().empty()) {
      std::printf("%s: rbd lock held by %s\n", ResourceId(e->name()).c_str(),
                  e->rbd().lock_owner().c_str());
    }
  }
  for (const v1::Export* e : exports) PrintOverlayLines(*e);
  for (const v1::Export* e : exports) {
    const bool limited = QosLimitsText(e->qos()) != "none";
    if (!limited && e->qos_group().empty()) continue;
    std::printf("%s: QoS limits %s", ResourceId(e->name()).c_str(),
                QosLimitsText(e->qos()).c_str());
    if (!e->qos_group().empty()) {
      std::printf(", group %s", ResourceId(e->qos_group()).c_str());
    }
    std::printf("\n");
  }
}

void PrintOne(const Global& g, const v1::Export& e) {
  if (g.output == "json") {
    std::printf("%s", ToJson(e).c_str());
  } else {
    PrintTable({&e});
  }
}

// Sets the one backend the flags name. Returns a usage message or "".
std::string SetBackend(const CreateFlags& f, v1::Export* e) {
  absl::StatusOr<uint64_t> size = uint64_t{0};
  if (f.memory) {
    size = SizeFlag("--memory", *f.memory);
    e->mutable_memory()->set_size_bytes(size.value_or(0));
  } else if (f.null) {
    size = SizeFlag("--null", *f.null);
    e->mutable_null()->set_size_bytes(size.value_or(0));
  } else if (f.rbd) {
    // POOL/IMAGE or POOL/IMAGE@SNAP (the namespace is its own flag).
    std::string spec = *f.rbd;
    v1::RbdBackend* r = e->mutable_rbd();
    if (size_t at = spec.find('@'); at != std::string::npos) {
      r->set_snapshot(spec.substr(at + 1));
      spec.resize(at);
    }
    size_t slash = spec.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 == spec.size() ||
        spec.find('/', slash + 1) != std::string::npos ||
        (f.rbd->find('@') != std::string::npos && r->snapshot().empty())) {
      return absl::StrCat(
          "--rbd: expected POOL/IMAGE or POOL/IMAGE@SNAP, got \"", *f.rbd,
          "\"");
    }
    r->set_pool(spec.substr(0, slash));
    r->set_image(spec.substr(slash + 1));
    if (f.rbd_namespace) r->set_namespace_(*f.rbd_namespace);
    if (f.ceph_conf) r->set_ceph_conf(*f.ceph_conf);
    if (f.ceph_user) r->set_ceph_user(*f.ceph_user);
    if (f.size) {
      size = SizeFlag("--size", *f.size);
      r->set_size_bytes(size.value_or(0));
    }
    if (!r->snapshot().empty()) e->set_read_only(true);
  } else {
    v1::FileBackend* file = e->mutable_file();
    file->set_path(*f.file);
    if (f.size) {
      size = SizeFlag("--size", *f.size);
      file->set_size_bytes(size.value_or(0));
      file->set_create(true);
    }
    if (f.overlay_of) {
      // The overlay file is created if missing, with its base's size.
      file->set_base(*f.overlay_of);
      file->set_create(true);
    }
    if (f.cluster_size) {
      absl::StatusOr<uint64_t> cluster =
          SizeFlag("--cluster-size", *f.cluster_size);
      if (!cluster.ok()) return std::string(cluster.status().message());
      file->set_cluster_size_bytes(*cluster);
    }
    if (f.io) {
      absl::StatusOr<FileIo> io = ParseFileIo(*f.io);
      if (!io.ok()) return absl::StrCat("--", io.status().message());
      e->mutable_file()->set_io(*io == FileIo::kIoUring   ? v1::FILE_IO_IO_URING
                                : *io == FileIo::kThreads ? v1::FILE_IO_THREADS
                                                          : v1::FILE_IO_AUTO);
    }
  }
  if (f.io && !f.file) return "--io is only for --file exports";
  if (f.overlay_of && !f.file) {
    return "--overlay-of needs --file, the overlay's own file";
  }
  if (f.cluster_size && !f.overlay_of) {
    return "--cluster-size is only for --overlay-of";
  }
  if (f.size && !f.file && !f.rbd) {
    return "--size is only for --file and --rbd exports";
  }
  if (!f.rbd &&
      (f.rbd_namespace || f.ceph_conf || f.ceph_user || f.take_over)) {
    return "--namespace, --ceph-conf, --ceph-user and --take-over are only "
           "for --rbd exports";
  }
  return size.ok() ? "" : std::string(size.status().message());
}

// Sets the block sizes the flags give. Returns a usage message or "".
std::string SetBlockSizes(const CreateFlags& f, v1::Export* e) {
  struct Field {
    const char* flag;
    const std::optional<std::string>* value;
    void (v1::BlockSizes::*set)(uint32_t);
  };
  for (const Field& field :
       {Field{"--min-block-size", &f.min_block_size,
              &v1::BlockSizes::set_minimum},
        Field{"--preferred-block-size", &f.preferred_block_size,
              &v1::BlockSizes::set_preferred},
        Field{"--max-payload", &f.max_payload,
              &v1::BlockSizes::set_maximum_payload}}) {
    if (!*field.value) continue;
    absl::StatusOr<uint64_t> v = SizeFlag(field.flag, **field.value);
    if (!v.ok()) return std::string(v.status().message());
    if (*v > UINT32_MAX) return absl::StrCat(field.flag, ": too large");
    (e->mutable_block_sizes()->*field.set)(static_cast<uint32_t>(*v));
  }
  return "";
}

int RunCreate(const Global& g, const CreateFlags& f, const CLI::App& cmd) {
  if (f.memory.has_value() + f.null.has_value() + f.file.has_value() +
          f.rbd.has_value() !=
      1) {
    return UsageError("give exactly one of --memory, --null, --file, --rbd",
                      HelpOf(cmd));
  }
  v1::CreateExportRequest req;
  req.set_export_id(f.name);
  req.set_take_over(f.take_over);
  v1::Export* e = req.mutable_export_();
  e->set_read_only(f.read_only);
  std::vector<std::string> paths;
  for (const std::string& m : {SetBackend(f, e), SetBlockSizes(f, e),
                               ApplyCommonFlags(f.common, e, &paths)}) {
    if (!m.empty()) return UsageError(m, HelpOf(cmd));
  }
  int code = kExitOk;
  auto stub = NewStub<v1::ExportService>(g, &code);
  if (!stub) return code;
  v1::Export out;
  grpc::Status s = stub->CreateExport(Context().get(), req, &out);
  if (!s.ok()) return ReportError(s);
  PrintOne(g, out);
  return kExitOk;
}

int RunList(const Global& g) {
  int code = kExitOk;
  auto stub = NewStub<v1::ExportService>(g, &code);
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

int RunGet(const Global& g, const std::string& name) {
  int code = kExitOk;
  auto stub = NewStub<v1::ExportService>(g, &code);
  if (!stub) return code;
  v1::GetExportRequest req;
  req.set_name(ExportResourceName(name));
  v1::Export out;
  grpc::Status s = stub->GetExport(Context().get(), req, &out);
  if (!s.ok()) return ReportError(s);
  PrintOne(g, out);
  return kExitOk;
}

int RunUpdate(const Global& g, const UpdateFlags& f, const CLI::App& cmd) {
  v1::UpdateExportRequest req;
  req.mutable_export_()->set_name(ExportResourceName(f.name));
  std::vector<std::string> paths;
  if (std::string m = ApplyCommonFlags(f.common, req.mutable_export_(), &paths);
      !m.empty()) {
    return UsageError(m, HelpOf(cmd));
  }
  req.set_retry(f.retry);
  if (paths.empty() && !req.retry()) {
    return UsageError("nothing to update", HelpOf(cmd));
  }
  for (const auto& p : paths) req.mutable_update_mask()->add_paths(p);
  int code = kExitOk;
  auto stub = NewStub<v1::ExportService>(g, &code);
  if (!stub) return code;
  v1::Export out;
  grpc::Status s = stub->UpdateExport(Context().get(), req, &out);
  if (!s.ok()) return ReportError(s);
  PrintOne(g, out);
  return kExitOk;
}

int RunRemove(const Global& g, const RemoveFlags& f, const CLI::App& cmd) {
  v1::DeleteExportRequest req;
  req.set_name(ExportResourceName(f.name));
  if (f.mode == "safe")
    req.set_mode(v1::DELETE_MODE_SAFE);
  else if (f.mode == "drain")
    req.set_mode(v1::DELETE_MODE_DRAIN);
  else if (f.mode == "hard")
    req.set_mode(v1::DELETE_MODE_HARD);
  else
    return UsageError("--mode must be safe, drain or hard", HelpOf(cmd));
  int timeout_s = 30;
  if (f.timeout) {
    auto d = ParseDuration(*f.timeout);
    if (!d.ok())
      return UsageError(absl::StrCat("--timeout: ", d.status().message()),
                        HelpOf(cmd));
    *req.mutable_timeout() = DurationToProto(*d);
    timeout_s = static_cast<int>(d->count() / 1000);
  }
  int code = kExitOk;
  auto stub = NewStub<v1::ExportService>(g, &code);
  if (!stub) return code;
  v1::DeleteExportResponse out;
  grpc::Status s = stub->DeleteExport(Context(timeout_s + 30).get(), req, &out);
  if (!s.ok()) return ReportError(s);
  if (g.output == "json") {
    std::printf("%s", ToJson(out).c_str());
  } else {
    std::printf("removed %s (%u connection(s) closed)\n", f.name.c_str(),
                out.closed_clients());
  }
  return kExitOk;
}

void AddNameArgument(CLI::App* cmd, std::string* name) {
  cmd->add_option("NAME", *name, "the export's name (its id)")
      ->required()
      ->type_name("");
}

}  // namespace

Command AddCreateCommand(CLI::App& app, const Global& g) {
  CLI::App* cmd = AddSubcommand(
      app, "create",
      "Creates an export and starts serving it.\n"
      "It is persisted in the daemon's state directory and recreated when\n"
      "the daemon restarts. Give exactly one of --memory, --null, --file,\n"
      "--rbd; --file with --overlay-of makes an overlay.");
  auto f = std::make_shared<CreateFlags>();
  AddNameArgument(cmd, &f->name);
  AddOptional(cmd, "--memory", "SIZE", &f->memory,
              "sparse RAM disk of SIZE (e.g. 1GiB)");
  AddOptional(cmd, "--null", "SIZE", &f->null, "discards writes, reads zeroes");
  AddOptional(cmd, "--file", "PATH", &f->file,
              "a file or block device under the daemon's\n"
              "--allow-path; with --size, created (sparse) if\n"
              "missing");
  AddOptional(cmd, "--rbd", "POOL/IMAGE[@SNAP]", &f->rbd,
              "a Ceph RBD image (a snapshot is served\n"
              "read-only); with --size, created if missing.\n"
              "A writable export holds the image's exclusive\n"
              "lock: one writer across all hosts");
  AddOptional(cmd, "--namespace", "NS", &f->rbd_namespace,
              "the --rbd image's RADOS namespace");
  AddOptional(cmd, "--ceph-conf", "PATH", &f->ceph_conf,
              "ceph.conf for --rbd (default: librados' search,\n"
              "/etc/ceph/ceph.conf)");
  AddOptional(cmd, "--ceph-user", "ID", &f->ceph_user,
              "rados id for --rbd (client.ID; default admin)");
  cmd->add_flag("--take-over", f->take_over,
                "--rbd: break another host's lock on the image,\n"
                "fencing it (blocklisted: it cannot write again);\n"
                "for failing over from a dead host");
  AddOptional(cmd, "--size", "SIZE", &f->size,
              "size of a --file or --rbd image to create");
  AddOptional(cmd, "--overlay-of", "BASE", &f->overlay_of,
              "make --file a copy-on-write overlay on BASE (an\n"
              "export's name, or the absolute path of a file,\n"
              "opened read-only): writes go to --file, created\n"
              "if missing with BASE's size; the rest reads from\n"
              "BASE, served read-only while it has overlays");
  AddOptional(cmd, "--cluster-size", "SIZE", &f->cluster_size,
              "an overlay's copy-on-write unit: a power of two\n"
              "from 4KiB to 2MiB (default 64KiB)");
  AddOptional(cmd, "--io", "MODE", &f->io,
              "how a --file does its I/O: auto (default: io_uring\n"
              "where the host allows it), io_uring, or threads");
  cmd->add_flag("--read-only", f->read_only, "clients may not write");
  AddCommonFlags(cmd, &f->common);
  AddOptional(cmd, "--min-block-size", "N", &f->min_block_size,
              "smallest block size advertised to clients\n"
              "(default 1); unaligned READ/WRITE get EINVAL");
  AddOptional(cmd, "--preferred-block-size", "N", &f->preferred_block_size,
              "preferred block size advertised (default 4KiB)");
  AddOptional(cmd, "--max-payload", "N", &f->max_payload,
              "largest READ/WRITE payload (default 32MiB)");
  return {cmd, [&g, f, cmd] { return RunCreate(g, *f, *cmd); }};
}

Command AddListCommand(CLI::App& app, const Global& g) {
  CLI::App* cmd = AddSubcommand(app, "list", "Lists every export.");
  return {cmd, [&g] { return RunList(g); }};
}

Command AddGetCommand(CLI::App& app, const Global& g) {
  CLI::App* cmd = AddSubcommand(app, "get", "Shows one export.");
  auto name = std::make_shared<std::string>();
  AddNameArgument(cmd, name.get());
  return {cmd, [&g, name] { return RunGet(g, *name); }};
}

Command AddUpdateCommand(CLI::App& app, const Global& g) {
  CLI::App* cmd = AddSubcommand(
      app, "update",
      "Changes a live export.\n"
      "New requests use the new buffer settings; requests in flight finish\n"
      "with theirs; --tls and --max-clients apply to new clients; no client\n"
      "is disconnected. QoS limits apply at once, to requests already\n"
      "waiting too; a limit flag changes that number only (--iops 5000\n"
      "keeps --iops-burst and the bandwidth limits; --iops 0 removes the\n"
      "limit). The change is saved before it is applied.");
  auto f = std::make_shared<UpdateFlags>();
  AddNameArgument(cmd, &f->name);
  AddCommonFlags(cmd, &f->common);
  cmd->add_flag("--retry", f->retry,
                "reopen a FAILED export (one whose file could not\n"
                "be opened at start) after fixing the cause; it is\n"
                "served once that works");
  return {cmd, [&g, f, cmd] { return RunUpdate(g, *f, *cmd); }};
}

Command AddRemoveCommand(CLI::App& app, const Global& g) {
  CLI::App* cmd = AddSubcommand(app, "remove",
                                "Removes an export (--mode safe|drain|hard).");
  auto f = std::make_shared<RemoveFlags>();
  AddNameArgument(cmd, &f->name);
  cmd->add_option("--mode", f->mode,
                  "safe (default): refuse while clients are connected;\n"
                  "drain: refuse new clients, let connected ones\n"
                  "finish their in-flight requests, flush, then close\n"
                  "them (forcibly at --timeout); hard: flush what was\n"
                  "acknowledged, then close connections now")
      ->type_name("MODE");
  AddOptional(cmd, "--timeout", "DUR", &f->timeout,
              "deadline for drain (default 30s)");
  return {cmd, [&g, f, cmd] { return RunRemove(g, *f, *cmd); }};
}

}  // namespace nbdmgr::cli
