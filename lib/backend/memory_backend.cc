#include "lib/backend/memory_backend.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

#include "absl/strings/str_cat.h"
#include "lib/util/heap_trim.h"
#include "lib/util/size.h"
#include "lib/util/stream_copy.h"

namespace nbdmgr {

absl::StatusOr<std::unique_ptr<MemoryBackend>> MemoryBackend::Create(
    uint64_t size) {
  if (size == 0) {
    return absl::InvalidArgumentError("memory export size must be > 0");
  }
  if (size > kMaxSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory export size ", FormatSize(size),
                     " is above the maximum of ", FormatSize(kMaxSize)));
  }
  return std::unique_ptr<MemoryBackend>(new MemoryBackend(size));
}

MemoryBackend::MemoryBackend(uint64_t size)
    : size_(size),
      tables_((size + kPageSize * kPagesPerTable - 1) /
              (kPageSize * kPagesPerTable)) {}

MemoryBackend::~MemoryBackend() {
  for (auto& t : tables_) {
    Table* table = t.load();
    if (table == nullptr) continue;
    for (auto& p : table->pages) {
      if (Page* page = p.load(); page != nullptr) page->Release();
    }
    delete table;
  }
}

BackendCaps MemoryBackend::caps() const {
  BackendCaps c;
  c.can_trim = true;
  c.can_zero = true;
  c.can_fast_zero = true;
  c.can_flush = true;
  c.can_multi_conn = true;
  c.can_extents = true;
  c.can_cache = true;  // nothing to prefetch: answered at once, inline
  c.blocking = false;
  c.zero_copy_read = true;
  c.pin_unit = kPageSize;
  return c;
}

MemoryBackend::Page* MemoryBackend::Page::Allocate() {
  // calloc: fresh memory from the OS needs no clearing.
  void* mem = std::calloc(1, sizeof(Page));
  return mem == nullptr ? nullptr : new (mem) Page;
}

void MemoryBackend::Page::Release() {
  if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    this->~Page();
    std::free(this);
    NoteHeapFreed(sizeof(Page));
  }
}

std::atomic<MemoryBackend::Page*>* MemoryBackend::Slot(uint64_t page,
                                                       bool create) {
  std::atomic<Table*>& entry = tables_[page / kPagesPerTable];
  Table* table = entry.load(std::memory_order_acquire);
  if (table == nullptr) {
    if (!create) return nullptr;
    auto* fresh = new Table();
    if (entry.compare_exchange_strong(table, fresh,
                                      std::memory_order_acq_rel)) {
      table = fresh;
    } else {
      delete fresh;  // another thread won; `table` now holds its table
    }
  }
  return &table->pages[page % kPagesPerTable];
}

MemoryBackend::Page* MemoryBackend::GetOrAllocate(std::atomic<Page*>& slot) {
  Page* p = slot.load(std::memory_order_acquire);
  if (p != nullptr) return p;
  Page* fresh = Page::Allocate();
  if (fresh == nullptr) return nullptr;
  if (slot.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) {
    allocated_.fetch_add(kPageSize, std::memory_order_relaxed);
    return fresh;
  }
  fresh->Release();
  return p;
}

template <typename Fn>
absl::Status MemoryBackend::ForEachPiece(uint64_t offset, uint64_t length,
                                         Fn fn) {
  uint64_t done = 0;
  while (done < length) {
    uint64_t pos = offset + done;
    size_t in_page = pos % kPageSize;
    size_t n = std::min<uint64_t>(length - done, kPageSize - in_page);
    if (absl::Status st = fn(pos / kPageSize, in_page, n, done); !st.ok()) {
      return st;
    }
    done += n;
  }
  return absl::OkStatus();
}

absl::Status MemoryBackend::Read(uint64_t offset, std::span<uint8_t> buf) {
  return ForEachPiece(
      offset, buf.size(),
      [&](uint64_t page, size_t in_page, size_t n, uint64_t done) {
        std::atomic<Page*>* slot = Slot(page, /*create=*/false);
        std::shared_lock lock(StripeOf(page));
        Page* p = slot ? slot->load(std::memory_order_acquire) : nullptr;
        if (p != nullptr) {
          std::memcpy(buf.data() + done, p->data + in_page, n);
        } else {
          std::memset(buf.data() + done, 0, n);
        }
        return absl::OkStatus();
      });
}

absl::Status MemoryBackend::ReadPinned(
    uint64_t offset, uint64_t length,
    absl::FunctionRef<void(std::span<const uint8_t>, Pin*)> piece) {
  return ForEachPiece(
      offset, length, [&](uint64_t page, size_t in_page, size_t n, uint64_t) {
        std::atomic<Page*>* slot = Slot(page, /*create=*/false);
        Page* p = nullptr;
        if (slot != nullptr) {
          std::shared_lock lock(StripeOf(page));
          p = slot->load(std::memory_order_acquire);
          if (p != nullptr) p->refs.fetch_add(1, std::memory_order_relaxed);
        }
        if (p != nullptr) {
          piece(std::span<const uint8_t>(p->data + in_page, n), p);
        } else {
          piece(ZeroBytes().first(n), nullptr);
        }
        return absl::OkStatus();
      });
}

absl::Status MemoryBackend::Write(uint64_t offset,
                                  std::span<const uint8_t> data, bool fua) {
  (void)fua;  // RAM is as durable as it gets
  return ForEachPiece(
      offset, data.size(),
      [&](uint64_t page, size_t in_page, size_t n, uint64_t done) {
        std::atomic<Page*>* slot = Slot(page, /*create=*/true);
        std::unique_lock lock(StripeOf(page));  // whole pages, never torn
        Page* p = GetOrAllocate(*slot);
        if (p == nullptr) {
          return absl::ResourceExhaustedError(
              "out of memory for memory export");
        }
        // No longer known zero, before any byte changes.
        std::atomic<bool>& known_zero = KnownZero(page);
        if (known_zero.load(std::memory_order_relaxed)) {
          known_zero.store(false, std::memory_order_release);
        }
        if (n >= kStreamCopyBytes) {
          StreamCopy(p->data + in_page, data.data() + done, n);
        } else {
          std::memcpy(p->data + in_page, data.data() + done, n);
        }
        return absl::OkStatus();
      });
}

void MemoryBackend::FreeRange(uint64_t offset, uint64_t length) {
  (void)ForEachPiece(
      offset, length, [&](uint64_t page, size_t in_page, size_t n, uint64_t) {
        std::atomic<Page*>* slot = Slot(page, /*create=*/false);
        if (slot != nullptr) {
          if (n == kPageSize) {
            Page* p;
            {
              std::unique_lock lock(StripeOf(page));
              p = slot->exchange(nullptr, std::memory_order_acq_rel);
              KnownZero(page).store(false, std::memory_order_release);
            }
            if (p != nullptr) {
              p->Release();  // freed now unless a reader still has it pinned
              allocated_.fetch_sub(kPageSize, std::memory_order_relaxed);
            }
          } else {
            // Part of a page: zeroed in place; a page known zero stays so.
            std::unique_lock lock(StripeOf(page));
            Page* p = slot->load(std::memory_order_acquire);
            if (p != nullptr) std::memset(p->data + in_page, 0, n);
          }
        }
        return absl::OkStatus();
      });
}

absl::Status MemoryBackend::Trim(uint64_t offset, uint64_t length, bool fua) {
  (void)fua;
  FreeRange(offset, length);
  return absl::OkStatus();
}

absl::Status MemoryBackend::Zero(uint64_t offset, uint64_t length,
                                 ZeroOptions options) {
  if (options.may_trim) {
    FreeRange(offset, length);
    return absl::OkStatus();
  }
  // NO_HOLE: the range must end up allocated (and zero). A page this
  // zeroes whole, or allocates (fresh pages are zero), is known zero; one
  // zeroed in part keeps what it was.
  return ForEachPiece(
      offset, length, [&](uint64_t page, size_t in_page, size_t n, uint64_t) {
        std::atomic<Page*>* slot = Slot(page, /*create=*/true);
        std::unique_lock lock(StripeOf(page));
        const bool fresh = slot->load(std::memory_order_acquire) == nullptr;
        Page* p = GetOrAllocate(*slot);
        if (p == nullptr) {
          return absl::ResourceExhaustedError(
              "out of memory for memory export");
        }
        if (!fresh) std::memset(p->data + in_page, 0, n);
        if (fresh || n == kPageSize) {
          KnownZero(page).store(true, std::memory_order_release);
        }
        return absl::OkStatus();
      });
}

absl::Status MemoryBackend::Extents(uint64_t offset, uint64_t length,
                                    absl::FunctionRef<bool(Extent)> visit) {
  uint64_t end = offset + length;
  uint64_t pos = offset;
  Extent current{0, 0};
  while (pos < end) {
    uint64_t page = pos / kPageSize;
    uint64_t n = std::min<uint64_t>(end - pos, kPageSize - pos % kPageSize);
    std::atomic<Page*>* slot = Slot(page, /*create=*/false);
    const bool allocated =
        slot != nullptr && slot->load(std::memory_order_acquire) != nullptr;
    uint32_t flags = kExtentHole | kExtentZero;
    if (allocated) {
      flags = KnownZero(page).load(std::memory_order_acquire) ? kExtentZero : 0;
    }
    if (current.length > 0 && current.flags != flags) {
      if (!visit(current)) return absl::OkStatus();
      current = Extent{0, 0};
    }
    current.flags = flags;
    current.length += n;
    pos += n;
  }
  if (current.length > 0) visit(current);
  return absl::OkStatus();
}

}  // namespace nbdmgr
