#include "lib/export/bitmap_set.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/export/export_config.h"

namespace nbdmgr {

absl::Status BitmapSet::ValidateName(std::string_view name) {
  return nbdmgr::ValidateName("bitmap name", name);
}

absl::StatusOr<std::shared_ptr<DirtyBitmap>> BitmapSet::NewBits(
    uint64_t granularity) const {
  if (granularity == 0) granularity = kDefaultGranularity;
  absl::StatusOr<std::unique_ptr<DirtyBitmap>> bits =
      DirtyBitmap::Create(0, granularity);  // validates the granularity
  if (!bits.ok()) return bits.status();
  // One bit per block, rounded up to 64-bit words; checked before sizing.
  const uint64_t blocks = size_ / granularity + (size_ % granularity != 0);
  const uint64_t bytes = (blocks + 63) / 64 * 8;
  if (bytes > kMaxBitmapBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a bitmap at granularity ", granularity, " would take ",
                     bytes, " bytes for this export; the maximum is ",
                     kMaxBitmapBytes, ": choose a larger granularity"));
  }
  bits = DirtyBitmap::Create(size_, granularity);
  if (!bits.ok()) return bits.status();
  return std::shared_ptr<DirtyBitmap>(std::move(*bits));
}

BitmapInfo BitmapSet::Describe(const std::string& name, const Entry& e) {
  BitmapInfo info;
  info.name = name;
  info.granularity = e.granularity;
  info.active = e.active;
  info.consistent = e.consistent;
  info.inconsistent_reason = e.reason;
  if (e.bits != nullptr) {
    info.memory_bytes = e.bits->memory_bytes();
    if (e.consistent) info.dirty_bytes = e.bits->dirty_bytes();
  }
  return info;
}

void BitmapSet::Reindex() {
  active_.clear();
  for (auto& [name, e] : bitmaps_) {
    if (e.active && e.bits != nullptr) active_.push_back(e.bits.get());
  }
  active_count_.store(active_.size(), std::memory_order_release);
}

void BitmapSet::MarkSlow(uint64_t offset, uint64_t length) {
  ReaderMutexLock lock(&mu_);
  for (DirtyBitmap* b : active_) b->Mark(offset, length);
}

BitmapSet::Map BitmapSet::Copy() const {
  ReaderMutexLock lock(&mu_);
  return bitmaps_;
}

std::vector<BitmapRecord> BitmapSet::RecordsOf(const Map& m) {
  std::vector<BitmapRecord> out;
  for (const auto& [name, e] : m) {
    BitmapRecord r;
    r.name = name;
    r.active = e.active;
    r.consistent = e.consistent;
    r.inconsistent_reason = e.reason;
    r.bits = e.bits;
    r.granularity = e.granularity;
    out.push_back(std::move(r));
  }
  return out;
}

absl::Status BitmapSet::Apply(Map next, const Persist& persist,
                              const std::function<void()>& under_lock) {
  if (persist) {
    if (absl::Status st = persist(RecordsOf(next)); !st.ok()) return st;
  }
  WriterMutexLock lock(&mu_);
  bitmaps_ = std::move(next);
  if (under_lock) under_lock();
  Reindex();
  return absl::OkStatus();
}

absl::Status BitmapSet::Room(const Map& m) {
  if (m.size() >= kMaxBitmaps) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the export has its maximum of ", kMaxBitmaps, " bitmaps"));
  }
  return absl::OkStatus();
}

absl::StatusOr<BitmapSet::Map::iterator> BitmapSet::Existing(
    Map& m, const std::string& name) {
  auto it = m.find(name);
  if (it == m.end()) {
    return absl::NotFoundError(absl::StrCat("no bitmap named \"", name, "\""));
  }
  return it;
}

absl::StatusOr<BitmapInfo> BitmapSet::Add(const std::string& name,
                                          uint64_t granularity,
                                          const Persist& persist) {
  if (absl::Status st = ValidateName(name); !st.ok()) return st;
  absl::StatusOr<std::shared_ptr<DirtyBitmap>> bits = NewBits(granularity);
  if (!bits.ok()) return bits.status();
  MutexLock change(&change_mu_);
  Map next = Copy();
  if (next.contains(name)) {
    return absl::AlreadyExistsError(
        absl::StrCat("bitmap \"", name, "\" already exists"));
  }
  if (absl::Status st = Room(next); !st.ok()) return st;
  Entry& e = next[name];
  e.granularity = (*bits)->granularity();
  e.bits = std::move(*bits);
  const BitmapInfo info = Describe(name, e);
  if (absl::Status st = Apply(std::move(next), persist); !st.ok()) return st;
  return info;
}

absl::Status BitmapSet::Remove(const std::string& name,
                               const Persist& persist) {
  MutexLock change(&change_mu_);
  Map next = Copy();
  absl::StatusOr<Map::iterator> it = Existing(next, name);
  if (!it.ok()) return it.status();
  next.erase(*it);
  return Apply(std::move(next), persist);
}

absl::StatusOr<BitmapInfo> BitmapSet::Clear(const std::string& name,
                                            const Persist& persist) {
  MutexLock change(&change_mu_);
  Map next = Copy();
  absl::StatusOr<Map::iterator> it = Existing(next, name);
  if (!it.ok()) return it.status();
  Entry& e = (*it)->second;
  DirtyBitmap* in_place = nullptr;
  if (e.bits == nullptr || !e.consistent) {
    // Clients may still hold inconsistent bits: start afresh instead.
    absl::StatusOr<std::shared_ptr<DirtyBitmap>> bits = NewBits(e.granularity);
    if (!bits.ok()) return bits.status();
    e.bits = std::move(*bits);
  } else {
    in_place = e.bits.get();
  }
  e.consistent = true;
  e.reason.clear();
  e.active = true;  // records from now on, even if a checkpoint froze it
  BitmapInfo info = Describe(name, e);
  info.dirty_bytes = 0;
  // Cleared with marking held off, so no write lands between the clear
  // and the bitmap becoming active (or is wiped by it).
  if (absl::Status st = Apply(std::move(next), persist,
                              [in_place] {
                                if (in_place != nullptr) in_place->Clear();
                              });
      !st.ok()) {
    return st;
  }
  return info;
}

absl::StatusOr<std::pair<BitmapInfo, BitmapInfo>> BitmapSet::Checkpoint(
    const std::string& frozen, const std::string& started, uint64_t granularity,
    const Persist& persist) {
  if (absl::Status st = ValidateName(started); !st.ok()) return st;
  MutexLock change(&change_mu_);
  Map next = Copy();
  absl::StatusOr<Map::iterator> it = Existing(next, frozen);
  if (!it.ok()) return it.status();
  Entry& old = (*it)->second;
  if (!old.active) {
    return absl::FailedPreconditionError(
        absl::StrCat("bitmap \"", frozen,
                     "\" is frozen already (by an earlier checkpoint)"));
  }
  if (next.contains(started)) {
    return absl::AlreadyExistsError(
        absl::StrCat("bitmap \"", started, "\" already exists"));
  }
  if (absl::Status st = Room(next); !st.ok()) return st;
  absl::StatusOr<std::shared_ptr<DirtyBitmap>> bits =
      NewBits(granularity == 0 ? old.granularity : granularity);
  if (!bits.ok()) return bits.status();
  old.active = false;
  Entry& e = next[started];
  e.granularity = (*bits)->granularity();
  e.bits = std::move(*bits);
  std::pair<BitmapInfo, BitmapInfo> infos{Describe(frozen, next.at(frozen)),
                                          Describe(started, e)};
  // One swap under the writer lock: a write is marked before it (in
  // `frozen`) or after it (in `started`).
  if (absl::Status st = Apply(std::move(next), persist); !st.ok()) return st;
  return infos;
}

bool BitmapSet::Has(const std::string& name) const {
  ReaderMutexLock lock(&mu_);
  return bitmaps_.contains(name);
}

std::shared_ptr<const DirtyBitmap> BitmapSet::Find(
    const std::string& name) const {
  ReaderMutexLock lock(&mu_);
  auto it = bitmaps_.find(name);
  if (it == bitmaps_.end() || !it->second.consistent) return nullptr;
  return it->second.bits;
}

std::vector<std::string> BitmapSet::ConsistentNames() const {
  ReaderMutexLock lock(&mu_);
  std::vector<std::string> names;
  for (const auto& [name, e] : bitmaps_) {
    if (e.consistent && e.bits != nullptr) names.push_back(name);
  }
  return names;
}

std::vector<BitmapInfo> BitmapSet::List() const {
  ReaderMutexLock lock(&mu_);
  std::vector<BitmapInfo> out;
  for (const auto& [name, e] : bitmaps_) out.push_back(Describe(name, e));
  return out;
}

absl::StatusOr<BitmapInfo> BitmapSet::Get(const std::string& name) const {
  ReaderMutexLock lock(&mu_);
  auto it = bitmaps_.find(name);
  if (it == bitmaps_.end()) {
    return absl::NotFoundError(absl::StrCat("no bitmap named \"", name, "\""));
  }
  return Describe(name, it->second);
}

std::vector<BitmapRecord> BitmapSet::Records() const {
  ReaderMutexLock lock(&mu_);
  return RecordsOf(bitmaps_);
}

void BitmapSet::Restore(std::vector<BitmapRecord> records) {
  WriterMutexLock lock(&mu_);
  bitmaps_.clear();
  for (BitmapRecord& r : records) {
    if (!ValidateName(r.name).ok() || bitmaps_.size() >= kMaxBitmaps) continue;
    Entry& e = bitmaps_[r.name];
    e.granularity = r.granularity;
    e.active = r.active;
    e.consistent = r.consistent;
    e.reason = std::move(r.inconsistent_reason);
    e.bits = std::move(r.bits);
    if (e.bits != nullptr && e.bits->size() != size_) {
      e.bits = nullptr;
      e.consistent = false;
      e.reason = "the export's size changed";
    }
    if (e.bits != nullptr) e.granularity = e.bits->granularity();
    if (e.bits == nullptr && e.consistent) {
      e.consistent = false;
      if (e.reason.empty()) e.reason = "its bits were not kept";
    }
    // An inconsistent active bitmap records from now on: it needs bits.
    if (e.bits == nullptr && e.active) {
      absl::StatusOr<std::shared_ptr<DirtyBitmap>> bits =
          NewBits(e.granularity);
      if (!bits.ok()) {
        bitmaps_.erase(r.name);  // a granularity no longer allowed
        continue;
      }
      e.bits = std::move(*bits);
    }
  }
  Reindex();
}

}  // namespace nbdmgr
