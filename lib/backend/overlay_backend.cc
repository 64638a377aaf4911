#include "lib/backend/overlay_backend.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "lib/util/crc32c.h"
#include "lib/util/little_endian.h"
#include "lib/util/strings.h"

namespace nbdmgr {
namespace {

constexpr char kMagic[] = "NBDMGROV";
constexpr uint32_t kVersion = 1;
constexpr uint64_t kHeaderSize = 4096;
constexpr uint64_t kMapOffset = kHeaderSize;
constexpr uint64_t kPage = 4096;
constexpr size_t kMaxBaseName = 1024;

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

OverlayBackend::OverlayBackend(std::unique_ptr<FileBackend> file,
                               std::shared_ptr<Backend> base, uint64_t size,
                               uint32_t cluster, uint64_t data_offset,
                               std::string base_name)
    : file_(std::move(file)),
      base_(std::move(base)),
      size_(size),
      cluster_(cluster),
      shift_(__builtin_ctzll(cluster)),
      data_offset_(data_offset),
      base_name_(std::move(base_name)),
      base_async_(base_->caps().async),
      base_inline_(!base_->caps().blocking),
      map_(new std::atomic<uint8_t>[clusters()]),
      stripes_(new std::mutex[kStripes]) {
  for (uint64_t c = 0; c < clusters(); ++c) map_[c].store(kBase);
}

OverlayBackend::~OverlayBackend() = default;

absl::StatusOr<std::unique_ptr<OverlayBackend>> OverlayBackend::Open(
    const OverlayOptions& options, std::shared_ptr<Backend> base) {
  const uint32_t cs = options.cluster_size;
  if (cs != 0 &&
      ((cs & (cs - 1)) != 0 || cs < kMinCluster || cs > kMaxCluster)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cluster size ", cs, " is not a power of two from ",
                     kMinCluster, " to ", kMaxCluster));
  }
  if (options.base_name.size() > kMaxBaseName) {
    return absl::InvalidArgumentError("base name too long");
  }
  const uint64_t size = base->size();
  const std::string& path = options.file.path;
  FileBackendOptions fo = options.file;
  fo.size.reset();
  fo.create = false;
  fo.io = FileIo::kThreads;
  absl::StatusOr<std::unique_ptr<FileBackend>> file = FileBackend::Open(fo);
  if (!file.ok() && absl::IsNotFound(file.status()) && options.file.create &&
      !options.file.read_only) {
    // A new overlay: header, an all-zero map (a hole), the data area.
    const uint32_t cluster = cs == 0 ? 64 * 1024 : cs;
    const uint64_t n = (size + cluster - 1) / cluster;
    const uint64_t data_offset =
        AlignUp(kMapOffset + AlignUp(n, kPage), cluster);
    fo.size = data_offset + size;
    fo.create = true;
    file = FileBackend::Open(fo);
    if (!file.ok()) return file.status();
    std::vector<uint8_t> h(kHeaderSize, 0);
    std::memcpy(h.data(), kMagic, 8);
    PutLe(&h[8], kVersion, 4);
    PutLe(&h[12], cluster, 4);
    PutLe(&h[16], size, 8);
    PutLe(&h[24], kMapOffset, 8);
    PutLe(&h[32], data_offset, 8);
    PutLe(&h[40], options.base_name.size(), 4);
    std::memcpy(&h[44], options.base_name.data(), options.base_name.size());
    const size_t crc_at = 44 + options.base_name.size();
    PutLe(&h[crc_at],
          Crc32c(std::string_view(reinterpret_cast<const char*>(h.data()),
                                  crc_at)),
          4);
    if (absl::Status st = (*file)->Write(0, h, /*fua=*/true); !st.ok()) {
      (*file)->RemoveCreatedFile();
      return st;
    }
    auto* o = new OverlayBackend(std::move(*file), std::move(base), size,
                                 cluster, data_offset, options.base_name);
    std::unique_ptr<OverlayBackend> out(o);
    if (absl::Status st = out->LoadMap(); !st.ok()) return st;
    return out;
  }
  if (!file.ok()) return file.status();
  // An existing overlay: check the header before anything is sized by it.
  auto corrupt = [&](std::string_view what) {
    return absl::DataLossError(
        absl::StrCat(path, ": not a usable overlay: ", ToAbsl(what)));
  };
  if ((*file)->size() < kHeaderSize) return corrupt("shorter than its header");
  std::vector<uint8_t> h(kHeaderSize);
  if (absl::Status st = (*file)->Read(0, h); !st.ok()) return st;
  if (std::memcmp(h.data(), kMagic, 8) != 0) return corrupt("bad magic");
  if (GetLe(&h[8], 4) != kVersion) return corrupt("unknown version");
  const uint64_t name_len = GetLe(&h[40], 4);
  if (name_len > kMaxBaseName) return corrupt("bad header");
  const size_t crc_at = 44 + name_len;
  if (GetLe(&h[crc_at], 4) !=
      Crc32c(
          std::string_view(reinterpret_cast<const char*>(h.data()), crc_at))) {
    return corrupt("header checksum mismatch");
  }
  const uint64_t cluster = GetLe(&h[12], 4);
  const uint64_t vsize = GetLe(&h[16], 8);
  const uint64_t map_offset = GetLe(&h[24], 8);
  const uint64_t data_offset = GetLe(&h[32], 8);
  if ((cluster & (cluster - 1)) != 0 || cluster < kMinCluster ||
      cluster > kMaxCluster || map_offset != kMapOffset ||
      data_offset % cluster != 0 ||
      data_offset < kMapOffset + (vsize + cluster - 1) / cluster ||
      data_offset > (*file)->size() || (*file)->size() - data_offset != vsize) {
    return corrupt("inconsistent header");
  }
  if (vsize != size) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": overlay made for a base of ", vsize,
                     " bytes; this base has ", size));
  }
  std::string base_name(reinterpret_cast<const char*>(&h[44]), name_len);
  std::unique_ptr<OverlayBackend> out(new OverlayBackend(
      std::move(*file), std::move(base), size, static_cast<uint32_t>(cluster),
      data_offset, std::move(base_name)));
  if (absl::Status st = out->LoadMap(); !st.ok()) return st;
  return out;
}

absl::Status OverlayBackend::LoadMap() {
  const uint64_t n = clusters();
  MutexLock lock(&flush_mu_);
  disk_map_.assign(n, 0);
  if (absl::Status st = file_->Read(kMapOffset, disk_map_); !st.ok()) {
    return st;
  }
  uint64_t data = 0, zero = 0;
  for (uint64_t c = 0; c < n; ++c) {
    const uint8_t s = disk_map_[c];
    if (s > kZero) {
      return absl::DataLossError(absl::StrCat(
          "overlay map entry ", c, " is ", s, ": the overlay file is corrupt"));
    }
    map_[c].store(s, std::memory_order_relaxed);
    data += s == kData;
    zero += s == kZero;
  }
  data_clusters_.store(data);
  zero_clusters_.store(zero);
  return absl::OkStatus();
}

BackendCaps OverlayBackend::caps() const {
  BackendCaps c;
  c.can_trim = true;
  c.can_zero = true;
  c.can_fast_zero = true;
  c.can_flush = true;
  c.can_multi_conn = true;  // one file, one map: a flush covers every writer
  c.can_extents = true;
  c.can_cache = true;  // the overlay file's clusters and the base's Cache()
  c.blocking = true;
  // Reads go through the io thread's ring (the overlay file's clusters)
  // and the base's own asynchronous or inline reads, no thread hop.
  c.async_read = base_async_ || base_inline_;
  c.async_needs_ring = true;
  c.sparse_read_min = 64 * 1024;
  return c;
}

void OverlayBackend::SetState(uint64_t c, State s) {
  const uint8_t old = map_[c].exchange(s, std::memory_order_acq_rel);
  if (old == s) return;
  if (old == kData) data_clusters_.fetch_sub(1, std::memory_order_relaxed);
  if (old == kZero) zero_clusters_.fetch_sub(1, std::memory_order_relaxed);
  if (s == kData) data_clusters_.fetch_add(1, std::memory_order_relaxed);
  if (s == kZero) zero_clusters_.fetch_add(1, std::memory_order_relaxed);
  MutexLock lock(&pending_mu_);
  pending_[c] = s;
}

OverlayBackend::Locks OverlayBackend::LockRange(uint64_t offset,
                                                uint64_t length) {
  Locks l{std::shared_lock<std::shared_mutex>(whole_), {}};
  // A cluster larger than a region: lock by cluster start, so one
  // cluster always maps to one stripe.
  const int shift = std::max<int>(kRegionShift, shift_);
  const uint64_t first = (offset >> shift_ << shift_) >> shift;
  const uint64_t last = (offset + length - 1) >> shift;
  absl::InlinedVector<size_t, 8> stripes;
  for (uint64_t r = first; r <= last && stripes.size() < kStripes; ++r) {
    stripes.push_back(r % kStripes);
  }
  std::sort(stripes.begin(), stripes.end());  // one order: no deadlock
  stripes.erase(std::unique(stripes.begin(), stripes.end()), stripes.end());
  l.stripes.reserve(stripes.size());
  for (size_t s : stripes) l.stripes.emplace_back(stripes_[s]);
  return l;
}

absl::Status OverlayBackend::ReadBelow(State s, uint64_t offset,
                                       std::span<uint8_t> buf) {
  if (s == kZero) {
    std::memset(buf.data(), 0, buf.size());
    return absl::OkStatus();
  }
  return base_->Read(offset, buf);
}

std::pair<OverlayBackend::State, uint64_t> OverlayBackend::RunAt(
    uint64_t pos, uint64_t end) const {
  const State s = StateOf(pos >> shift_);
  uint64_t run_end = std::min(end, ((pos >> shift_) + 1) << shift_);
  while (run_end < end && StateOf(run_end >> shift_) == s) {
    run_end = std::min(end, run_end + cluster_);
  }
  return {s, run_end};
}

absl::Status OverlayBackend::Read(uint64_t offset, std::span<uint8_t> buf) {
  const uint64_t end = offset + buf.size();
  uint64_t pos = offset;
  while (pos < end) {
    // Not a structured binding: clang 14 cannot capture one in a lambda.
    const std::pair<State, uint64_t> run = RunAt(pos, end);
    const State s = run.first;
    const uint64_t run_end = run.second;
    std::span<uint8_t> part = buf.subspan(pos - offset, run_end - pos);
    absl::Status st = s == kData ? file_->Read(data_offset_ + pos, part)
                                 : ReadBelow(s, pos, part);
    if (!st.ok()) return st;
    pos = run_end;
  }
  return absl::OkStatus();
}

namespace {

// A read of several runs: one completion per run, `done` when all have
// (with the first error). Deletes itself.
class MultiRead {
 public:
  class Part final : public IoCompletion {
   public:
    void Complete(absl::Status status) override {
      owner->PartDone(std::move(status));
    }
    MultiRead* owner = nullptr;
  };

  MultiRead(IoCompletion& done, size_t parts)
      : done_(done), parts_(new Part[parts]), left_(parts + 1) {
    for (size_t i = 0; i < parts; ++i) parts_[i].owner = this;
  }
  Part& part(size_t i) { return parts_[i]; }
  // Every part started: drops the guard that kept an early finish from
  // completing before the last part began.
  void Started() { PartDone(absl::OkStatus()); }

  void PartDone(absl::Status status) {
    if (!status.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      if (first_error_.ok()) first_error_ = std::move(status);
    }
    if (left_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    IoCompletion& done = done_;
    absl::Status result;
    {
      std::lock_guard<std::mutex> lock(mu_);
      result = first_error_;
    }
    delete this;
    done.Complete(std::move(result));
  }

 private:
  IoCompletion& done_;
  std::unique_ptr<Part[]> parts_;
  std::atomic<size_t> left_;
  std::mutex mu_;
  absl::Status first_error_;
};

}  // namespace

void OverlayBackend::StartRun(State s, uint64_t pos, std::span<uint8_t> part,
                              IoRing* ring, IoCompletion& done) {
  switch (s) {
    case kZero:
      std::memset(part.data(), 0, part.size());
      done.Complete(absl::OkStatus());
      return;
    case kData:
      file_->ReadAsync(data_offset_ + pos, part, ring, done);
      return;
    case kBase:
      if (base_async_) {
        base_->ReadAsync(pos, part, ring, done);
      } else {
        done.Complete(base_->Read(pos, part));
      }
      return;
  }
}

void OverlayBackend::ReadAsync(uint64_t offset, std::span<uint8_t> buf,
                               IoRing* ring, IoCompletion& done) {
  const uint64_t end = offset + buf.size();
  const std::pair<State, uint64_t> first = RunAt(offset, end);
  if (first.second == end) {  // one run: the common case
    StartRun(first.first, offset, buf, ring, done);
    return;
  }
  std::vector<std::pair<State, uint64_t>> runs;  // state, run start
  for (uint64_t pos = offset; pos < end;) {
    const std::pair<State, uint64_t> run = RunAt(pos, end);
    runs.emplace_back(run.first, pos);
    pos = run.second;
  }
  auto* multi = new MultiRead(done, runs.size());
  for (size_t i = 0; i < runs.size(); ++i) {
    const uint64_t pos = runs[i].second;
    const uint64_t next = i + 1 < runs.size() ? runs[i + 1].second : end;
    StartRun(runs[i].first, pos, buf.subspan(pos - offset, next - pos), ring,
             multi->part(i));
  }
  multi->Started();
}

absl::Status OverlayBackend::WriteInCluster(uint64_t c, uint64_t offset,
                                            std::span<const uint8_t> data) {
  const State s = StateOf(c);
  const uint64_t start = c << shift_;
  if (s == kData) return file_->Write(data_offset_ + offset, data, false);
  std::vector<uint8_t> buf(ClusterBytes(c));
  if (absl::Status st = ReadBelow(s, start, buf); !st.ok()) return st;
  std::memcpy(buf.data() + (offset - start), data.data(), data.size());
  if (absl::Status st = file_->Write(data_offset_ + start, buf, false);
      !st.ok()) {
    return st;
  }
  if (s == kBase) copy_ups_.fetch_add(1, std::memory_order_relaxed);
  SetState(c, kData);
  return absl::OkStatus();
}

absl::Status OverlayBackend::Write(uint64_t offset,
                                   std::span<const uint8_t> data, bool fua) {
  const uint64_t end = offset + data.size();
  Locks locks = LockRange(offset, end - offset);
  // Runs of clusters that are the overlay's already or wholly overwritten
  // go out in one write; a partial first write of a cluster copies up.
  auto direct = [&](uint64_t c, uint64_t from) {
    const uint64_t cend = std::min(end, (c + 1) << shift_);
    return StateOf(c) == kData ||
           (from == c << shift_ && cend - from == ClusterBytes(c));
  };
  uint64_t pos = offset;
  while (pos < end) {
    const uint64_t c = pos >> shift_;
    if (!direct(c, pos)) {
      const uint64_t cend = std::min(end, (c + 1) << shift_);
      if (absl::Status st =
              WriteInCluster(c, pos, data.subspan(pos - offset, cend - pos));
          !st.ok()) {
        return st;
      }
      pos = cend;
      continue;
    }
    uint64_t run_end = std::min(end, (c + 1) << shift_);
    while (run_end < end && direct(run_end >> shift_, run_end)) {
      run_end = std::min(end, run_end + cluster_);
    }
    if (absl::Status st =
            file_->Write(data_offset_ + pos,
                         data.subspan(pos - offset, run_end - pos), false);
        !st.ok()) {
      return st;
    }
    for (uint64_t k = c; k <= (run_end - 1) >> shift_; ++k) SetState(k, kData);
    pos = run_end;
  }
  locks = Locks{};
  return fua ? Flush() : absl::OkStatus();
}

absl::Status OverlayBackend::ZeroRange(uint64_t offset, uint64_t length,
                                       bool allocate) {
  const uint64_t end = offset + length;
  Locks locks = LockRange(offset, end - offset);
  uint64_t pos = offset;
  while (pos < end) {
    const uint64_t c = pos >> shift_;
    const uint64_t start = c << shift_;
    const uint64_t cend = std::min(end, start + ClusterBytes(c));
    absl::Status st;
    if (pos != start || cend - start != ClusterBytes(c)) {
      if (StateOf(c) != kZero) {
        const std::vector<uint8_t> zeroes(cend - pos, 0);
        st = WriteInCluster(c, pos, zeroes);
      }
    } else if (allocate) {
      ZeroOptions zo;
      zo.may_trim = false;
      st = file_->Zero(data_offset_ + start, cend - start, zo);
      if (st.ok()) SetState(c, kData);
    } else {
      if (StateOf(c) == kData) {
        st = file_->Trim(data_offset_ + start, cend - start, false);
      }
      if (st.ok()) SetState(c, kZero);
    }
    if (!st.ok()) return st;
    pos = cend;
  }
  return absl::OkStatus();
}

absl::Status OverlayBackend::Trim(uint64_t offset, uint64_t length, bool fua) {
  if (absl::Status st = ZeroRange(offset, length, false); !st.ok()) return st;
  return fua ? Flush() : absl::OkStatus();
}

absl::Status OverlayBackend::Zero(uint64_t offset, uint64_t length,
                                  ZeroOptions options) {
  if (options.fast) {
    // Fast only when whole clusters change state: no copy-up, no writing.
    const bool whole = offset % cluster_ == 0 &&
                       (length % cluster_ == 0 || offset + length == size_);
    if (!whole || !options.may_trim) {
      return absl::UnimplementedError("zeroing this range is not fast");
    }
  }
  if (absl::Status st = ZeroRange(offset, length, !options.may_trim);
      !st.ok()) {
    return st;
  }
  return options.fua ? Flush() : absl::OkStatus();
}

absl::Status OverlayBackend::Cache(uint64_t offset, uint64_t length) {
  // Each run from where it reads: the overlay file's clusters, the base's
  // own Cache() for the base's; zero clusters read nothing.
  const uint64_t end = offset + length;
  uint64_t pos = offset;
  while (pos < end) {
    const std::pair<State, uint64_t> run = RunAt(pos, end);
    absl::Status st;
    if (run.first == kData) {
      st = file_->Cache(data_offset_ + pos, run.second - pos);
    } else if (run.first == kBase) {
      st = base_->Cache(pos, run.second - pos);
    }
    if (!st.ok()) return st;
    pos = run.second;
  }
  return absl::OkStatus();
}

absl::Status OverlayBackend::Extents(uint64_t offset, uint64_t length,
                                     absl::FunctionRef<bool(Extent)> visit) {
  return ExtentsOf(offset, length, /*for_read=*/false, visit);
}

absl::Status OverlayBackend::ReadExtents(
    uint64_t offset, uint64_t length, absl::FunctionRef<bool(Extent)> visit) {
  return ExtentsOf(offset, length, /*for_read=*/true, visit);
}

absl::Status OverlayBackend::ExtentsOf(uint64_t offset, uint64_t length,
                                       bool for_read,
                                       absl::FunctionRef<bool(Extent)> visit) {
  // Reports `n` bytes at `at` of `store` (the overlay file or the base)
  // with that store's own extents, clipped to `n`; what it leaves
  // unreported is data. Sets `go_on` false once `visit` says stop.
  bool go_on = true;
  auto pass = [&](Backend& store, uint64_t at, uint64_t n) {
    uint64_t done = 0;
    auto each = [&](Extent e) {
      const uint64_t k = std::min<uint64_t>(e.length, n - done);
      if (k == 0) return false;
      done += k;
      go_on = visit(Extent{k, e.flags});
      return go_on && done < n;
    };
    absl::Status st =
        for_read ? store.ReadExtents(at, n, each) : store.Extents(at, n, each);
    if (st.ok() && go_on && done < n) go_on = visit(Extent{n - done, 0});
    return st;
  };
  const uint64_t end = offset + length;
  uint64_t pos = offset;
  while (pos < end && go_on) {
    // Not a structured binding: clang 14 cannot capture one in a lambda.
    const std::pair<State, uint64_t> run = RunAt(pos, end);
    const State s = run.first;
    const uint64_t run_end = run.second;
    absl::Status st;
    if (s == kData && for_read) {
      // A READ's plan: the overlay's clusters are read as data, as before
      // (asking the file would cost two lseek calls for zeroes that only a
      // NO_HOLE WRITE_ZEROES leaves).
      go_on = visit(Extent{run_end - pos, 0});
    } else if (s == kData) {
      // The overlay's clusters, as its file holds them: data, or zeroes a
      // NO_HOLE WRITE_ZEROES left allocated there (unwritten extents).
      st = pass(*file_, data_offset_ + pos, run_end - pos);
    } else if (s == kZero) {
      go_on = visit(Extent{run_end - pos, kExtentHole | kExtentZero});
    } else {
      st = pass(*base_, pos, run_end - pos);
    }
    if (!st.ok()) return st;
    pos = run_end;
  }
  return absl::OkStatus();
}

absl::Status OverlayBackend::Flush() {
  MutexLock lock(&flush_mu_);
  return FlushLocked();
}

absl::Status OverlayBackend::FlushLocked() {
  absl::flat_hash_map<uint64_t, uint8_t> states;
  {
    MutexLock lock(&pending_mu_);
    states.swap(pending_);
  }
  auto requeue = [&] {
    // Newer states (set since) win over the ones this flush took.
    MutexLock lock(&pending_mu_);
    for (const auto& [c, s] : states) pending_.try_emplace(c, s);
  };
  // The data the states describe is on disk before any state is.
  if (absl::Status st = file_->Flush(); !st.ok()) {
    requeue();
    return st;
  }
  if (states.empty()) return absl::OkStatus();
  std::vector<uint64_t> pages;
  for (const auto& [c, s] : states) {
    disk_map_[c] = s;
    pages.push_back(c / kPage);
  }
  std::sort(pages.begin(), pages.end());
  pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
  absl::Status st = WriteMapPages(pages);
  if (st.ok()) st = file_->Flush();
  if (!st.ok()) requeue();  // written again by the next flush
  return st;
}

absl::Status OverlayBackend::WriteMapPages(const std::vector<uint64_t>& pages) {
  const uint64_t n = clusters();
  for (size_t i = 0; i < pages.size();) {
    size_t j = i + 1;
    while (j < pages.size() && pages[j] == pages[j - 1] + 1) ++j;
    const uint64_t from = pages[i] * kPage;
    const uint64_t to = std::min(n, (pages[j - 1] + 1) * kPage);
    if (absl::Status st = file_->Write(
            kMapOffset + from,
            std::span<const uint8_t>(disk_map_).subspan(from, to - from),
            false);
        !st.ok()) {
      return st;
    }
    i = j;
  }
  return absl::OkStatus();
}

std::optional<std::string> OverlayBackend::DurableIdentity() const {
  std::optional<std::string> own = file_->DurableIdentity();
  std::optional<std::string> base = base_->DurableIdentity();
  if (!own.has_value() || !base.has_value()) return std::nullopt;
  return absl::StrCat("overlay ", *own, "; base ", *base);
}

absl::Status OverlayBackend::ForEachOwnRun(
    absl::FunctionRef<absl::Status(uint64_t, uint64_t, State)> fn) {
  const uint64_t n = clusters();
  uint64_t c = 0;
  while (c < n) {
    const State s = StateOf(c);
    uint64_t e = c + 1;
    while (e < n && StateOf(e) == s && (e - c + 1) * cluster_ <= (1u << 20)) {
      ++e;
    }
    const uint64_t from = c << shift_;
    if (s != kBase) {
      if (absl::Status st = fn(from, std::min(size_, e << shift_) - from, s);
          !st.ok()) {
        return st;
      }
    }
    c = e;
  }
  return absl::OkStatus();
}

absl::Status OverlayBackend::Reset(
    absl::FunctionRef<void(uint64_t offset, uint64_t length)> changed) {
  auto locks = LockAll();
  return ResetHeld(changed);
}

absl::Status OverlayBackend::ResetHeld(
    absl::FunctionRef<void(uint64_t offset, uint64_t length)> changed) {
  MutexLock lock(&flush_mu_);
  {
    MutexLock pl(&pending_mu_);
    pending_.clear();
  }
  // The map first (durably): a crash after it reads the base everywhere,
  // whatever the data area still holds.
  std::fill(disk_map_.begin(), disk_map_.end(), 0);
  std::vector<uint64_t> pages((clusters() + kPage - 1) / kPage);
  for (size_t i = 0; i < pages.size(); ++i) pages[i] = i;
  absl::Status st = WriteMapPages(pages);
  if (st.ok()) st = file_->Flush();
  if (!st.ok()) {
    // The live map still holds; the next flush rewrites the disk map.
    for (uint64_t c = 0; c < clusters(); ++c) {
      const uint8_t s = map_[c].load();
      disk_map_[c] = s;
      if (s != kBase) {
        MutexLock pl(&pending_mu_);
        pending_[c] = s;
      }
    }
    return st;
  }
  (void)ForEachOwnRun([&](uint64_t offset, uint64_t length, State) {
    changed(offset, length);
    return absl::OkStatus();
  });
  for (uint64_t c = 0; c < clusters(); ++c) map_[c].store(kBase);
  data_clusters_.store(0);
  zero_clusters_.store(0);
  // Space back; failure here costs disk space only.
  (void)file_->Trim(data_offset_, size_, false);
  return absl::OkStatus();
}

absl::Status OverlayBackend::Commit(
    absl::FunctionRef<void(uint64_t offset, uint64_t length)> changed) {
  auto locks = LockAll();  // held to the end: no write slips in between
  std::vector<uint8_t> buf;
  absl::Status st = ForEachOwnRun([&](uint64_t from, uint64_t len, State s) {
    absl::Status r;
    if (s == kData) {
      buf.resize(len);
      r = file_->Read(data_offset_ + from, buf);
      if (r.ok()) r = base_->Write(from, buf, false);
    } else {
      r = base_->Zero(from, len, ZeroOptions{});
    }
    changed(from, len);  // even on failure: some of it may have landed
    return r;
  });
  if (!st.ok()) return st;
  if (absl::Status f = base_->Flush(); !f.ok()) return f;
  // The overlay reads the same before and after: its own bitmaps do not
  // change.
  return ResetHeld([](uint64_t, uint64_t) {});
}

OverlayStats OverlayBackend::stats() const {
  OverlayStats s;
  s.cluster_size = cluster_;
  s.allocated_bytes = data_clusters_.load() * cluster_;
  s.zero_bytes = zero_clusters_.load() * cluster_;
  s.copy_ups = copy_ups_.load();
  return s;
}

}  // namespace nbdmgr
