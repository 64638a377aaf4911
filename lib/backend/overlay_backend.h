#ifndef NBDMGR_LIB_BACKEND_OVERLAY_BACKEND_H_
#define NBDMGR_LIB_BACKEND_OVERLAY_BACKEND_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "lib/backend/backend.h"
#include "lib/backend/file_backend.h"
#include "lib/util/mutex.h"

namespace nbdmgr {

struct OverlayOptions {
  // The overlay file: path, confinement, whether it may be created. Its
  // size and I/O engine are the overlay's to choose.
  FileBackendOptions file;
  // Copy-on-write unit: a power of two from 4 KiB to 2 MiB. Used when the
  // file is created; an existing overlay keeps its own (0 accepts it).
  uint32_t cluster_size = 64 * 1024;
  // Who the base is (an export name or a path), recorded in the header
  // for `nbdctl` and error messages.
  std::string base_name;
};

// What an overlay reports about itself.
struct OverlayStats {
  uint64_t cluster_size = 0;
  uint64_t allocated_bytes = 0;  // clusters holding the overlay's own data
  uint64_t zero_bytes = 0;       // clusters trimmed or zeroed in it
  uint64_t copy_ups = 0;         // partial first writes that read the base
};

// A copy-on-write overlay on a read-only base: what the overlay wrote reads
// from its file, everything else from the base. Many overlays share one
// base backend (nothing of the base is copied per overlay but the clusters
// each one writes).
//
// File format (a sparse file, little-endian):
// - header, 4 KiB: "NBDMGROV", u32 version 1, u32 cluster size, u64
//   virtual size, u64 map offset (4096), u64 data offset, u32 length +
//   base name (at most 1024 bytes), u32 CRC-32C of the bytes before it;
// - map at the map offset: one byte per cluster: 0 the base's, 1 the
//   overlay's data, 2 zero (trimmed or zeroed in the overlay: the base
//   does not show through);
// - data at the data offset (a multiple of the cluster size): cluster i
//   at data offset + i * cluster size, the rest a hole.
//
// Crash consistency: data first, map later. A cluster's new state is
// written to the map only by a FLUSH (or FUA write), after an fdatasync
// of the data the state describes, then the map is synced. So after a
// crash every write acknowledged before a FLUSH (or with FUA) reads back,
// and the map never claims a cluster whose data was not written: one
// allocated since the last flush reads from the base again (that write
// was not yet promised). A partial first write of a cluster copies the
// rest of it from the base (a copy-up).
//
// Thread-safe: writes lock their clusters (striped locks, in one order);
// reads take no lock. Blocking: runs on the NBD layer's thread pool.
class OverlayBackend final : public Backend {
 public:
  static constexpr uint32_t kMinCluster = 4096;
  static constexpr uint32_t kMaxCluster = 2 * 1024 * 1024;

  // Opens the overlay at options.file.path on `base`, creating it if it
  // is missing and may be created. InvalidArgument (cluster size), the
  // file's open errors, DataLoss naming the file for a header or map that
  // is corrupt or not an overlay, FailedPrecondition if it was made for a
  // base of another size.
  static absl::StatusOr<std::unique_ptr<OverlayBackend>> Open(
      const OverlayOptions& options, std::shared_ptr<Backend> base);
  ~OverlayBackend() override;

  uint64_t size() const override { return size_; }
  BackendCaps caps() const override;
  // The overlay file's and the base's: either changing shows (none if the
  // base has none).
  std::optional<std::string> DurableIdentity() const override;
  absl::Status Read(uint64_t offset, std::span<uint8_t> buf) override;
  // With caps().async_read (the base reads without blocking the caller):
  // each run through its own store's asynchronous read (the overlay file
  // on the ring, the base's ReadAsync or inline read), zero runs filled
  // at once; `done` completes when every run has.
  void ReadAsync(uint64_t offset, std::span<uint8_t> buf, IoRing* ring,
                 IoCompletion& done) override;
  absl::Status Write(uint64_t offset, std::span<const uint8_t> data,
                     bool fua) override;
  absl::Status Flush() override;
  absl::Status Trim(uint64_t offset, uint64_t length, bool fua) override;
  absl::Status Zero(uint64_t offset, uint64_t length,
                    ZeroOptions options) override;
  // Prefetches each run where it reads from: the overlay file's clusters
  // (posix_fadvise), the base's (its Cache()); zero clusters need nothing.
  // The first error stops it.
  absl::Status Cache(uint64_t offset, uint64_t length) override;
  // The overlay's data clusters as its file reports them (data, or
  // allocated zeroes where a NO_HOLE WRITE_ZEROES left them), its zero
  // clusters as holes that read as zeroes, the rest as the base reports it.
  absl::Status Extents(uint64_t offset, uint64_t length,
                       absl::FunctionRef<bool(Extent)> visit) override;
  // Extents() for a READ's plan: the overlay's clusters are all data (its
  // file is not asked), the base's runs its ReadExtents().
  absl::Status ReadExtents(uint64_t offset, uint64_t length,
                           absl::FunctionRef<bool(Extent)> visit) override;

  // Drops every change: all clusters read from the base again, each range
  // that changes told to `changed` (for the overlay's dirty bitmaps).
  // Durable when it returns OK (map first, then the data's space is freed).
  absl::Status Reset(
      absl::FunctionRef<void(uint64_t offset, uint64_t length)> changed);
  // Writes every changed cluster into the base (which must be writable:
  // the caller checks no one else reads it meanwhile), telling `changed`
  // each range it wrote (for the base's and its other overlays' dirty
  // bitmaps; the overlay's own do not change: it reads the same), flushes
  // the base, then resets. Idempotent: a commit cut short by a crash is redone
  // whole by the next one.
  absl::Status Commit(
      absl::FunctionRef<void(uint64_t offset, uint64_t length)> changed);

  OverlayStats stats() const;
  // The overlay file (whether Open created it, to undo a failed create).
  FileBackend& file() { return *file_; }
  const std::string& base_name() const { return base_name_; }
  uint32_t cluster_size() const { return cluster_; }

 private:
  enum State : uint8_t { kBase = 0, kData = 1, kZero = 2 };
  // Writes lock the 1 MiB regions they touch (at most 33 for a 32 MiB
  // request), striped over kStripes mutexes, in ascending order, under a
  // shared hold of whole_; reset and commit hold whole_ exclusively.
  static constexpr size_t kStripes = 256;
  static constexpr int kRegionShift = 20;
  struct Locks {
    std::shared_lock<std::shared_mutex> whole;
    std::vector<std::unique_lock<std::mutex>> stripes;
  };

  OverlayBackend(std::unique_ptr<FileBackend> file,
                 std::shared_ptr<Backend> base, uint64_t size, uint32_t cluster,
                 uint64_t data_offset, std::string base_name);
  absl::Status LoadMap();
  uint64_t clusters() const { return (size_ + cluster_ - 1) / cluster_; }
  uint64_t ClusterBytes(uint64_t c) const {
    return std::min<uint64_t>(cluster_, size_ - c * cluster_);
  }
  State StateOf(uint64_t c) const {
    return static_cast<State>(map_[c].load(std::memory_order_acquire));
  }
  // The state at `pos` and where the run of clusters in that state ends
  // (at most `end`).
  std::pair<State, uint64_t> RunAt(uint64_t pos, uint64_t end) const;
  // Sets cluster c's state (its data already written) and queues it for
  // the map at the next flush.
  void SetState(uint64_t c, State s);
  // Locks what a write of [offset, offset + length) needs.
  Locks LockRange(uint64_t offset, uint64_t length);
  std::unique_lock<std::shared_mutex> LockAll() {
    return std::unique_lock<std::shared_mutex>(whole_);
  }
  // Writes `data` at `offset`, inside cluster c (locked), copying up.
  absl::Status WriteInCluster(uint64_t c, uint64_t offset,
                              std::span<const uint8_t> data);
  // Reads [offset, offset + buf.size()) of the virtual disk as the base
  // and zero states say (not for kData).
  absl::Status ReadBelow(State s, uint64_t offset, std::span<uint8_t> buf);
  // Starts reading one run in state `s` into `part`; completes `done`.
  void StartRun(State s, uint64_t pos, std::span<uint8_t> part, IoRing* ring,
                IoCompletion& done);
  // Extents() or, `for_read`, ReadExtents().
  absl::Status ExtentsOf(uint64_t offset, uint64_t length, bool for_read,
                         absl::FunctionRef<bool(Extent)> visit);
  // Makes [offset, offset + length) read as zeroes: whole clusters by
  // state (kZero; with `allocate`, zeroes written as data), the partial
  // ends by writing zeroes.
  absl::Status ZeroRange(uint64_t offset, uint64_t length, bool allocate);
  // The flush protocol: fdatasync the data, write the states queued
  // before it to the map, fdatasync again.
  absl::Status FlushLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(flush_mu_);
  // Reset() with every stripe held by the caller.
  absl::Status ResetHeld(
      absl::FunctionRef<void(uint64_t offset, uint64_t length)> changed);
  // Calls `fn(offset, length, state)` for runs of up to 1 MiB of clusters
  // in one state that is not kBase (stripes held by the caller).
  absl::Status ForEachOwnRun(
      absl::FunctionRef<absl::Status(uint64_t, uint64_t, State)> fn);
  absl::Status WriteMapPages(const std::vector<uint64_t>& pages)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(flush_mu_);

  const std::unique_ptr<FileBackend> file_;
  const std::shared_ptr<Backend> base_;
  const uint64_t size_;
  const uint32_t cluster_;
  const int shift_;
  const uint64_t data_offset_;
  const std::string base_name_;
  // The base reads asynchronously (ReadAsync) or never blocks (inline).
  const bool base_async_;
  const bool base_inline_;
  // The live state of every cluster.
  std::unique_ptr<std::atomic<uint8_t>[]> map_;
  std::unique_ptr<std::mutex[]> stripes_;
  std::shared_mutex whole_;
  Mutex pending_mu_;
  // States set since the last flush began, by cluster.
  absl::flat_hash_map<uint64_t, uint8_t> pending_ ABSL_GUARDED_BY(pending_mu_);
  Mutex flush_mu_;
  // What the map on disk says (or will, once the flush writing it ends).
  std::vector<uint8_t> disk_map_ ABSL_GUARDED_BY(flush_mu_);
  std::atomic<uint64_t> data_clusters_{0};
  std::atomic<uint64_t> zero_clusters_{0};
  std::atomic<uint64_t> copy_ups_{0};
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BACKEND_OVERLAY_BACKEND_H_
