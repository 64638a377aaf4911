#include "lib/export/export_config.h"

#include <tuple>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "lib/util/duration.h"
#include "lib/util/size.h"
#include "lib/util/strings.h"

namespace nbdmgr {
namespace {

// Splits on unescaped commas and unescapes "\,".
std::vector<std::string> SplitSpec(std::string_view spec) {
  std::vector<std::string> parts(1);
  for (size_t i = 0; i < spec.size(); ++i) {
    if (spec[i] == '\\' && i + 1 < spec.size() && spec[i + 1] == ',') {
      parts.back() += ',';
      ++i;
    } else if (spec[i] == ',') {
      parts.emplace_back();
    } else {
      parts.back() += spec[i];
    }
  }
  return parts;
}

struct KeyValue {
  std::string key;
  std::string value;
};

// The key=value pairs of `spec` (empty parts skipped). InvalidArgument
// naming the part that is not key=value, in "`what` spec ..." terms.
absl::StatusOr<std::vector<KeyValue>> SplitKeyValues(std::string_view what,
                                                     std::string_view spec) {
  std::vector<KeyValue> out;
  for (std::string& part : SplitSpec(spec)) {
    if (part.empty()) continue;
    const size_t eq = part.find('=');
    if (eq == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(ToAbsl(what), " spec \"", ToAbsl(spec), "\": \"", part,
                       "\" is not key=value"));
    }
    out.push_back({part.substr(0, eq), part.substr(eq + 1)});
  }
  return out;
}

// The QoS keys (iops=..., bandwidth-read-burst=...) as one sentence part.
constexpr char kQosKeys[] =
    "iops, iops-read, iops-write, bandwidth, bandwidth-read, "
    "bandwidth-write, each with a -burst twin";

// If `key` is a QoS key, sets its rate or burst in `limits` from `value`
// (a count for IOPS, a size for bandwidth, per second) and returns true;
// false for another key. InvalidArgument "`what` key KEY: ..." for a bad
// value. Ranges are ValidateQosLimits'.
absl::StatusOr<bool> ParseQosKey(std::string_view what, std::string_view key,
                                 const std::string& value, QosLimits& limits) {
  for (QosLimitKind kind : kAllQosLimitKinds) {
    const std::string_view name = SpecKeyOf(kind);
    if (!key.starts_with(name)) continue;
    const std::string_view rest = key.substr(name.size());
    if (!rest.empty() && rest != "-burst") continue;
    uint64_t n = 0;
    if (IsBytes(kind)) {
      absl::StatusOr<uint64_t> size = ParseSize(value);
      if (!size.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(ToAbsl(what), " key ", ToAbsl(key), ": ",
                         size.status().message(), " (bytes per second)"));
      }
      n = *size;
    } else if (!absl::SimpleAtoi(value, &n)) {
      return absl::InvalidArgumentError(absl::StrCat(
          ToAbsl(what), " key ", ToAbsl(key),
          ": expected a count of operations per second, got \"", value, "\""));
    }
    (rest.empty() ? limits[kind].rate : limits[kind].burst) = n;
    return true;
  }
  return false;
}

}  // namespace

std::string_view NameOf(TlsMode mode) {
  switch (mode) {
    case TlsMode::kOff:
      return "off";
    case TlsMode::kOptional:
      return "optional";
    case TlsMode::kRequire:
      return "require";
  }
  return "off";
}

absl::StatusOr<TlsMode> ParseTlsMode(std::string_view name) {
  for (TlsMode m : {TlsMode::kOff, TlsMode::kOptional, TlsMode::kRequire}) {
    if (NameOf(m) == name) return m;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown TLS mode \"", ToAbsl(name), "\" (off, optional, require)"));
}

namespace {

// "export key KEY: <message>" for a value that failed to parse.
absl::Status KeyError(std::string_view key, const absl::Status& st) {
  return absl::InvalidArgumentError(
      absl::StrCat("export key ", ToAbsl(key), ": ", st.message()));
}

absl::StatusOr<bool> ParseBool(std::string_view key, std::string_view v) {
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  return absl::InvalidArgumentError(
      absl::StrCat("export key ", ToAbsl(key),
                   ": expected true or false, got \"", ToAbsl(v), "\""));
}

// Ceph names: pools, images, namespaces and snapshots are UTF-8 without
// '/' or '@' (they separate pool/image@snap in every Ceph tool) or control
// characters, at most 255 bytes; a rados id is [A-Za-z0-9._-].
absl::Status ValidateCephName(std::string_view export_name,
                              std::string_view key, std::string_view v,
                              bool required) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "export ", ToAbsl(export_name), ": ", ToAbsl(key), " ", ToAbsl(why)));
  };
  if (v.empty()) {
    return required ? bad("is required for the rbd backend") : absl::OkStatus();
  }
  if (v.size() > 255) return bad("is longer than 255 bytes");
  if (!IsValidUtf8(v)) return bad("is not valid UTF-8");
  for (char ch : v) {
    if (ch == '/' || ch == '@' || static_cast<unsigned char>(ch) < 0x20 ||
        ch == 0x7f) {
      return bad(absl::StrCat("\"", ToAbsl(v),
                              "\" may not contain '/', '@' or control "
                              "characters"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateRbdLocation(const ExportConfig& c) {
  const RbdLocation& r = c.rbd;
  for (auto [key, value, required] : {std::tuple{"pool", &r.pool, true},
                                      {"image", &r.image, true},
                                      {"namespace", &r.ns, false},
                                      {"snapshot", &r.snapshot, false}}) {
    if (absl::Status st = ValidateCephName(c.name, key, *value, required);
        !st.ok()) {
      return st;
    }
  }
  for (char ch : r.ceph_user) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(ch)) && ch != '.' &&
        ch != '_' && ch != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat("export ", c.name, ": ceph-user \"", r.ceph_user,
                       "\" must be a rados id ([A-Za-z0-9._-], without "
                       "\"client.\")"));
    }
  }
  if (r.ceph_user.size() > 255) {
    return absl::InvalidArgumentError(
        absl::StrCat("export ", c.name, ": ceph-user is too long"));
  }
  if (!r.ceph_conf.empty() &&
      (r.ceph_conf.front() != '/' || r.ceph_conf.size() > kMaxPathBytes ||
       r.ceph_conf.find('\0') != std::string::npos ||
       !IsValidUtf8(r.ceph_conf))) {
    return absl::InvalidArgumentError(
        absl::StrCat("export ", c.name,
                     ": ceph-conf must be an absolute path: ", r.ceph_conf));
  }
  if (!c.path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("export ", c.name, ": path is only for the file backend"));
  }
  if (c.io != FileIo::kAuto) {
    return absl::InvalidArgumentError(
        absl::StrCat("export ", c.name, ": io is only for the file backend"));
  }
  if (c.size.has_value() && *c.size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("export ", c.name, ": size must be > 0"));
  }
  if (!r.snapshot.empty() && !c.read_only) {
    return absl::InvalidArgumentError(
        absl::StrCat("export ", c.name,
                     ": a snapshot export is read-only "
                     "(drop read-only=false)"));
  }
  if (!r.snapshot.empty() && c.size.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("export ", c.name,
                     ": a snapshot export takes its size "
                     "from the snapshot (no size=)"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view NameOf(BackendKind kind) {
  switch (kind) {
    case BackendKind::kMemory:
      return "memory";
    case BackendKind::kFile:
      return "file";
    case BackendKind::kNull:
      return "null";
    case BackendKind::kRbd:
      return "rbd";
  }
  return "unknown";
}

absl::Status ValidateName(std::string_view what, std::string_view name) {
  if (name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(what), " is empty"));
  }
  if (name.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat(ToAbsl(what), " is ", name.size(),
                     " characters long; the maximum is 128"));
  }
  auto alnum = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9');
  };
  if (!alnum(name[0])) {
    return absl::InvalidArgumentError(
        absl::StrCat(ToAbsl(what), " \"", ToAbsl(name),
                     "\" must start with a letter or digit"));
  }
  for (char c : name) {
    if (!alnum(c) && c != '.' && c != '_' && c != ':' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat(ToAbsl(what), " \"", ToAbsl(name),
                       "\" may contain only letters, digits and . _ : -"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateExportName(std::string_view name) {
  return ValidateName("export name", name);
}

absl::Status ValidateQosGroupName(std::string_view name) {
  return ValidateName("QoS group name", name);
}

absl::Status ValidateQosGroupConfig(const QosGroupConfig& group) {
  if (absl::Status st = ValidateQosGroupName(group.name); !st.ok()) return st;
  if (absl::Status st = ValidateQosLimits(group.limits); !st.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("QoS group ", group.name, ": ", st.message()));
  }
  return absl::OkStatus();
}

absl::Status ValidateBlockSizes(const BlockSizes& b) {
  auto pow2 = [](uint32_t v) { return v != 0 && (v & (v - 1)) == 0; };
  if (!pow2(b.minimum) || b.minimum > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block_sizes.minimum ", b.minimum, " must be a power of two <= 65536"));
  }
  if (!pow2(b.preferred) || b.preferred < std::max<uint32_t>(b.minimum, 512)) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_sizes.preferred ", b.preferred,
                     " must be a power of two >= max(minimum, 512)"));
  }
  if (b.maximum_payload < b.preferred || b.maximum_payload > kMaxPayloadLimit ||
      b.maximum_payload % b.minimum != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_sizes.maximum_payload ", b.maximum_payload,
                     " must be a multiple of minimum, >= preferred and <= ",
                     kMaxPayloadLimit));
  }
  return absl::OkStatus();
}

absl::Status ValidateExportConfig(const ExportConfig& c) {
  if (absl::Status st = ValidateExportName(c.name); !st.ok()) return st;
  auto invalid = [&c](auto&&... parts) {
    return absl::InvalidArgumentError(
        absl::StrCat("export ", c.name, ": ", parts...));
  };
  if (absl::Status st = ValidateBlockSizes(c.block_sizes); !st.ok()) {
    return invalid(st.message());
  }
  if (c.size && *c.size > kMaxExportSize) {
    return invalid("size ", *c.size, " is larger than NBD allows (",
                   kMaxExportSize, " bytes)");
  }
  if (c.size && *c.size % c.block_sizes.minimum != 0) {
    return invalid("size must be a multiple of the minimum block size");
  }
  if (c.description.size() > kMaxDescriptionBytes) {
    return invalid("description longer than ", kMaxDescriptionBytes, " bytes");
  }
  if (!IsValidUtf8(c.description)) {
    return invalid("description is not valid UTF-8");
  }
  if (c.buffers.memory_cap_bytes > kMaxExportSize) {
    return invalid("memory cap ", c.buffers.memory_cap_bytes,
                   " is out of range");
  }
  if (c.buffers.pool_idle_release.count() < 0 ||
      c.buffers.pool_idle_release > kMaxPoolIdleRelease) {
    return invalid("pool idle release must be between 0 and ",
                   FormatDuration(kMaxPoolIdleRelease));
  }
  if (c.stall_timeout &&
      (c.stall_timeout->count() < 0 || *c.stall_timeout > kMaxStallTimeout)) {
    return invalid("stall timeout must be between 0 and 24h");
  }
  if (absl::Status st = ValidateQosLimits(c.qos); !st.ok()) {
    return invalid(st.message());
  }
  if (!c.qos_group.empty()) {
    if (absl::Status st = ValidateQosGroupName(c.qos_group); !st.ok()) {
      return invalid(st.message());
    }
  }
  if (c.path.size() > kMaxPathBytes) {
    return invalid("path longer than ", kMaxPathBytes, " bytes");
  }
  if (c.path.find('\0') != std::string::npos || !IsValidUtf8(c.path)) {
    return invalid("path is not a valid UTF-8 file name");
  }
  if (c.backend != BackendKind::kRbd && c.rbd != RbdLocation{}) {
    return absl::InvalidArgumentError(
        absl::StrCat("export ", c.name,
                     ": pool, image, namespace, snapshot, ceph-conf and "
                     "ceph-user are only for the rbd backend"));
  }
  if (c.backend != BackendKind::kFile &&
      (!c.base.empty() || c.cluster_size != 0)) {
    return invalid("base and cluster-size are only for the file backend");
  }
  switch (c.backend) {
    case BackendKind::kMemory:
    case BackendKind::kNull:
      if (!c.size.has_value() || *c.size == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "export ", c.name, ": backend ", ToAbsl(NameOf(c.backend)),
            " needs a size > 0 (e.g. size=1GiB)"));
      }
      if (!c.path.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "export ", c.name, ": path is only for the file backend"));
      }
      if (c.io != FileIo::kAuto) {
        return absl::InvalidArgumentError(absl::StrCat(
            "export ", c.name, ": io is only for the file backend"));
      }
      break;
    case BackendKind::kRbd:
      if (absl::Status st = ValidateRbdLocation(c); !st.ok()) return st;
      break;
    case BackendKind::kFile:
      if (c.path.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("export ", c.name, ": backend file needs a path"));
      }
      if (c.path.front() != '/') {
        return absl::InvalidArgumentError(absl::StrCat(
            "export ", c.name, ": path must be absolute: ", c.path));
      }
      if (c.size.has_value() && *c.size == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("export ", c.name, ": size must be > 0"));
      }
      if (c.base.empty()) {
        if (c.cluster_size != 0) {
          return invalid("cluster-size is only for overlays (with base=)");
        }
        break;
      }
      if (c.base.size() > kMaxPathBytes || !IsValidUtf8(c.base) ||
          c.base.find('\0') != std::string::npos) {
        return invalid("base is not a valid export name or path");
      }
      if (c.base.front() != '/') {
        if (absl::Status st = ValidateExportName(c.base); !st.ok()) {
          return invalid("base must be an export's name or an absolute path: ",
                         st.message());
        }
        if (c.base == c.name)
          return invalid("an export cannot be its own base");
      }
      if (c.cluster_size != 0 &&
          ((c.cluster_size & (c.cluster_size - 1)) != 0 ||
           c.cluster_size < 4096 || c.cluster_size > 2 * 1024 * 1024)) {
        return invalid("cluster size ", c.cluster_size,
                       " must be a power of two from 4KiB to 2MiB");
      }
      if (c.io == FileIo::kIoUring) {
        return invalid("io=io_uring is not available for overlays");
      }
      break;
  }
  return absl::OkStatus();
}

absl::StatusOr<ExportConfig> ParseExportSpec(std::string_view spec) {
  ExportConfig c;
  bool have_name = false, have_backend = false, have_read_only = false;
  absl::StatusOr<std::vector<KeyValue>> pairs = SplitKeyValues("export", spec);
  if (!pairs.ok()) return pairs.status();
  for (const auto& [key, value] : *pairs) {
    absl::StatusOr<bool> qos = ParseQosKey("export", key, value, c.qos);
    if (!qos.ok()) return qos.status();
    if (*qos) continue;
    if (key == "name") {
      c.name = value;
      have_name = true;
    } else if (key == "backend") {
      if (value == "memory")
        c.backend = BackendKind::kMemory;
      else if (value == "file")
        c.backend = BackendKind::kFile;
      else if (value == "null")
        c.backend = BackendKind::kNull;
      else if (value == "rbd")
        c.backend = BackendKind::kRbd;
      else {
        return absl::InvalidArgumentError(
            absl::StrCat("export key backend: unknown backend \"", value,
                         "\" (memory, file, null or rbd)"));
      }
      have_backend = true;
    } else if (key == "path") {
      c.path = value;
    } else if (key == "base") {
      c.base = value;
    } else if (key == "cluster-size") {
      absl::StatusOr<uint64_t> n = ParseSize(value);
      if (!n.ok()) return KeyError("cluster-size", n.status());
      if (*n > UINT32_MAX) {
        return absl::InvalidArgumentError(
            "export key cluster-size: at most 2MiB");
      }
      c.cluster_size = static_cast<uint32_t>(*n);
    } else if (key == "qos-group") {
      c.qos_group = value;
    } else if (key == "pool") {
      c.rbd.pool = value;
    } else if (key == "image") {
      c.rbd.image = value;
    } else if (key == "namespace") {
      c.rbd.ns = value;
    } else if (key == "snapshot") {
      c.rbd.snapshot = value;
    } else if (key == "ceph-conf") {
      c.rbd.ceph_conf = value;
    } else if (key == "ceph-user") {
      c.rbd.ceph_user = value;
    } else if (key == "size") {
      absl::StatusOr<uint64_t> size = ParseSize(value);
      if (!size.ok()) return KeyError("size", size.status());
      c.size = *size;
    } else if (key == "read-only" || key == "readonly") {
      absl::StatusOr<bool> b = ParseBool(key, value);
      if (!b.ok()) return b.status();
      c.read_only = *b;
      have_read_only = true;
    } else if (key == "description") {
      c.description = value;
    } else if (key == "max-clients") {
      uint32_t n = 0;
      if (!absl::SimpleAtoi(value, &n)) {
        return KeyError(key, absl::InvalidArgumentError(absl::StrCat(
                                 "expected a count, got \"", value, "\"")));
      }
      c.max_clients = n;
    } else if (key == "stall-timeout") {
      absl::StatusOr<std::chrono::milliseconds> d = ParseDuration(value);
      if (!d.ok()) return KeyError("stall-timeout", d.status());
      c.stall_timeout = *d;
    } else if (key == "io") {
      absl::StatusOr<FileIo> io = ParseFileIo(value);
      if (!io.ok()) return KeyError("io", io.status());
      c.io = *io;
    } else if (key == "tls") {
      absl::StatusOr<TlsMode> mode = ParseTlsMode(value);
      if (!mode.ok()) return KeyError("tls", mode.status());
      c.tls = *mode;
    } else if (key == "min-block-size" || key == "preferred-block-size" ||
               key == "max-payload") {
      absl::StatusOr<uint64_t> v = ParseSize(value);
      if (!v.ok()) return KeyError(key, v.status());
      if (*v > UINT32_MAX) {
        return KeyError(key, absl::InvalidArgumentError("too large"));
      }
      uint32_t& field = key == "min-block-size" ? c.block_sizes.minimum
                        : key == "preferred-block-size"
                            ? c.block_sizes.preferred
                            : c.block_sizes.maximum_payload;
      field = static_cast<uint32_t>(*v);
    } else if (key == "buffer-strategy") {
      absl::StatusOr<BufferStrategy> st = ParseBufferStrategy(value);
      if (!st.ok()) return KeyError("buffer-strategy", st.status());
      c.buffers.strategy = *st;
    } else if (key == "memory-cap") {
      absl::StatusOr<uint64_t> cap = ParseSize(value);
      if (!cap.ok()) return KeyError("memory-cap", cap.status());
      c.buffers.memory_cap_bytes = *cap;
    } else if (key == "pool-idle-release") {
      absl::StatusOr<std::chrono::milliseconds> d = ParseDuration(value);
      if (!d.ok()) return KeyError("pool-idle-release", d.status());
      c.buffers.pool_idle_release = *d;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "export spec \"", ToAbsl(spec), "\": unknown key \"", key,
          "\" (name, backend, path, size, read-only, description, tls, "
          "max-clients, stall-timeout, io, pool, image, namespace, "
          "snapshot, ceph-conf, ceph-user, "
          "buffer-strategy, memory-cap, pool-idle-release, min-block-size, "
          "preferred-block-size, max-payload, qos-group, ",
          kQosKeys, ")"));
    }
  }
  if (!have_name) {
    return absl::InvalidArgumentError(
        absl::StrCat("export spec \"", ToAbsl(spec), "\": missing name="));
  }
  if (!have_backend) {
    return absl::InvalidArgumentError(
        absl::StrCat("export spec \"", ToAbsl(spec),
                     "\": missing backend= (memory, file, null, rbd)"));
  }
  // A snapshot cannot be written: its export is read-only unless the spec
  // says otherwise (which validation refuses).
  if (!c.rbd.snapshot.empty() && !have_read_only) c.read_only = true;
  if (absl::Status st = ValidateExportConfig(c); !st.ok()) return st;
  return c;
}

std::string FormatQosSpec(const QosLimits& limits) {
  std::string out;
  auto add = [&out](QosLimitKind kind, std::string_view suffix, uint64_t v) {
    std::string text = absl::StrCat(v);
    if (IsBytes(kind)) {
      // FormatSize rounds sizes that are no whole number of units.
      std::string size = FormatSize(v);
      if (absl::StatusOr<uint64_t> back = ParseSize(size);
          back.ok() && *back == v) {
        text = std::move(size);
      }
    }
    absl::StrAppend(&out, out.empty() ? "" : ",", ToAbsl(SpecKeyOf(kind)),
                    ToAbsl(suffix), "=", text);
  };
  for (QosLimitKind kind : kAllQosLimitKinds) {
    const RateLimit& l = limits[kind];
    if (l.rate == 0) continue;
    add(kind, "", l.rate);
    if (l.burst != 0) add(kind, "-burst", l.burst);
  }
  return out;
}

absl::StatusOr<QosGroupConfig> ParseQosGroupSpec(std::string_view spec) {
  QosGroupConfig g;
  bool have_name = false;
  absl::StatusOr<std::vector<KeyValue>> pairs =
      SplitKeyValues("QoS group", spec);
  if (!pairs.ok()) return pairs.status();
  for (const auto& [key, value] : *pairs) {
    absl::StatusOr<bool> qos = ParseQosKey("QoS group", key, value, g.limits);
    if (!qos.ok()) return qos.status();
    if (*qos) continue;
    if (key == "name") {
      g.name = value;
      have_name = true;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("QoS group spec \"", ToAbsl(spec), "\": unknown key \"",
                       key, "\" (name, ", kQosKeys, ")"));
    }
  }
  if (!have_name) {
    return absl::InvalidArgumentError(
        absl::StrCat("QoS group spec \"", ToAbsl(spec), "\": missing name="));
  }
  if (absl::Status st = ValidateQosGroupConfig(g); !st.ok()) return st;
  return g;
}

}  // namespace nbdmgr
