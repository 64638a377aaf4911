#include "lib/export/dirty_bitmap.h"

#include <algorithm>
#include <bit>

#include "absl/strings/str_cat.h"
#include "lib/util/crc32c.h"
#include "lib/util/little_endian.h"

namespace nbdmgr {

absl::StatusOr<std::unique_ptr<DirtyBitmap>> DirtyBitmap::Create(
    uint64_t size, uint64_t granularity) {
  if (!std::has_single_bit(granularity) || granularity < kMinGranularity ||
      granularity > kMaxGranularity) {
    return absl::InvalidArgumentError(absl::StrCat(
        "granularity ", granularity, ": expected a power of two from ",
        kMinGranularity, " to ", kMaxGranularity, " bytes"));
  }
  return std::unique_ptr<DirtyBitmap>(new DirtyBitmap(size, granularity));
}

DirtyBitmap::DirtyBitmap(uint64_t size, uint64_t granularity)
    : size_(size),
      granularity_(granularity),
      shift_(std::countr_zero(granularity)),
      blocks_((size >> shift_) + ((size & (granularity - 1)) != 0)),
      words_count_(static_cast<size_t>((blocks_ + 63) / 64)),
      words_(new std::atomic<uint64_t>[words_count_]) {
  for (size_t i = 0; i < words_count_; ++i) {
    words_[i].store(0, std::memory_order_relaxed);
  }
}

void DirtyBitmap::Mark(uint64_t offset, uint64_t length) {
  if (length == 0 || offset >= size_) return;
  const uint64_t end = std::min(size_, offset + std::min(length, size_));
  const uint64_t first = offset >> shift_;
  const uint64_t last = (end - 1) >> shift_;  // inclusive
  uint64_t newly = 0;
  for (uint64_t w = first / 64; w <= last / 64; ++w) {
    const uint64_t lo = w == first / 64 ? first % 64 : 0;
    const uint64_t hi = w == last / 64 ? last % 64 : 63;  // inclusive
    const uint64_t mask =
        (hi - lo == 63 ? ~uint64_t{0} : ((uint64_t{1} << (hi - lo + 1)) - 1))
        << lo;
    std::atomic<uint64_t>& word = words_[w];
    // Already dirty: a load, no write.
    if ((word.load(std::memory_order_relaxed) & mask) == mask) continue;
    const uint64_t before = word.fetch_or(mask, std::memory_order_relaxed);
    newly += std::popcount(mask & ~before);
  }
  if (newly != 0) dirty_blocks_.fetch_add(newly, std::memory_order_relaxed);
}

void DirtyBitmap::Clear() {
  for (size_t i = 0; i < words_count_; ++i) {
    const uint64_t before = words_[i].exchange(0, std::memory_order_relaxed);
    if (before != 0) {
      dirty_blocks_.fetch_sub(std::popcount(before), std::memory_order_relaxed);
    }
  }
}

uint64_t DirtyBitmap::dirty_bytes() const {
  // A Clear() racing a Mark() may subtract bits before the Mark counted
  // them: the counter dips below zero (wraps) for a moment. Read as signed
  // and clamped, it never reports more than the export.
  const auto signed_blocks =
      static_cast<int64_t>(dirty_blocks_.load(std::memory_order_relaxed));
  if (signed_blocks <= 0) return 0;
  const uint64_t blocks =
      std::min(static_cast<uint64_t>(signed_blocks), blocks_);
  uint64_t bytes = blocks << shift_;
  // The last block is only as long as what is left of the export.
  const uint64_t tail = size_ & (granularity_ - 1);
  if (tail != 0 && Test(blocks_ - 1)) bytes -= granularity_ - tail;
  return bytes;
}

bool DirtyBitmap::Test(uint64_t block) const {
  return (words_[block / 64].load(std::memory_order_relaxed) >> (block % 64)) &
         1;
}

void DirtyBitmap::Extents(
    uint64_t offset, uint64_t length,
    absl::FunctionRef<bool(uint64_t length, bool dirty)> visit) const {
  if (length == 0 || offset >= size_) return;
  const uint64_t end = std::min(size_, offset + std::min(length, size_));
  uint64_t pos = offset;
  while (pos < end) {
    const bool dirty = Test(pos >> shift_);
    // Extend the run block by block, skipping whole words of one kind.
    uint64_t block = (pos >> shift_) + 1;
    const uint64_t end_block = ((end - 1) >> shift_) + 1;
    while (block < end_block) {
      const uint64_t word = words_[block / 64].load(std::memory_order_relaxed);
      const uint64_t same = dirty ? ~word : word;  // bits that differ
      const uint64_t rest = same >> (block % 64);
      if (rest == 0) {
        block += 64 - block % 64;  // the rest of this word matches
        continue;
      }
      block += std::countr_zero(rest);
      break;
    }
    const uint64_t run_end =
        std::min(end, std::min(block, end_block) << shift_);
    if (!visit(run_end - pos, dirty)) return;
    pos = run_end;
  }
}

namespace {

constexpr std::string_view kMagic = "NBDMGRBM";
constexpr uint32_t kVersion = 1;
// magic, version, size, granularity, word count
constexpr size_t kHeaderBytes = 8 + 4 + 8 + 8 + 8;

}  // namespace

std::string DirtyBitmap::Serialize() const {
  std::string out;
  out.reserve(kHeaderBytes + words_count_ * 8 + 4);
  out.append(kMagic);
  PutLe(out, kVersion, 4);
  PutLe(out, size_, 8);
  PutLe(out, granularity_, 8);
  PutLe(out, words_count_, 8);
  for (size_t i = 0; i < words_count_; ++i) {
    PutLe(out, words_[i].load(std::memory_order_relaxed), 8);
  }
  PutLe(out, Crc32c(out), 4);
  return out;
}

absl::StatusOr<std::unique_ptr<DirtyBitmap>> DirtyBitmap::Parse(
    std::string_view data, uint64_t size) {
  auto corrupt = [](const std::string& why) {
    return absl::DataLossError(absl::StrCat("not a valid bitmap: ", why));
  };
  if (data.size() < kHeaderBytes + 4 || data.substr(0, 8) != kMagic) {
    return corrupt("no header");
  }
  const uint32_t stored =
      static_cast<uint32_t>(GetLe(data.data() + data.size() - 4, 4));
  if (Crc32c(data.substr(0, data.size() - 4)) != stored) {
    return corrupt("checksum mismatch");
  }
  const char* p = data.data() + 8;
  if (GetLe(p, 4) != kVersion) return corrupt("unknown version");
  const uint64_t saved_size = GetLe(p + 4, 8);
  const uint64_t granularity = GetLe(p + 12, 8);
  const uint64_t words = GetLe(p + 20, 8);
  if (words > (data.size() - kHeaderBytes - 4) / 8 ||
      data.size() != kHeaderBytes + words * 8 + 4) {
    return corrupt("length does not match its header");
  }
  // Before anything is sized: the export's own size, not the header's.
  if (saved_size != size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the bitmap covers ", saved_size, " bytes but the export has ", size));
  }
  absl::StatusOr<std::unique_ptr<DirtyBitmap>> b = Create(size, granularity);
  if (!b.ok()) return corrupt(std::string(b.status().message()));
  if ((*b)->words_count_ != words) {
    return corrupt("length does not match its header");
  }
  uint64_t dirty = 0;
  for (size_t i = 0; i < words; ++i) {
    const uint64_t w = GetLe(p + 28 + 8 * i, 8);
    (*b)->words_[i].store(w, std::memory_order_relaxed);
    dirty += std::popcount(w);
  }
  // Bits past the last block would be counted, never shown.
  if (const uint64_t tail = (*b)->blocks_ % 64;
      tail != 0 &&
      ((*b)->words_[words - 1].load(std::memory_order_relaxed) >> tail) != 0) {
    return corrupt("bits set past the end");
  }
  (*b)->dirty_blocks_.store(dirty, std::memory_order_relaxed);
  return b;
}

}  // namespace nbdmgr
