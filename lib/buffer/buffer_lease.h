#ifndef NBDMGR_LIB_BUFFER_BUFFER_LEASE_H_
#define NBDMGR_LIB_BUFFER_BUFFER_LEASE_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

namespace nbdmgr {

// Where a lease's memory goes back to. Must outlive every lease it issued.
class BufferReleaser {
 public:
  virtual ~BufferReleaser() = default;
  // Takes back `data` (of `capacity` bytes) and `charged` budget bytes.
  virtual void Release(uint8_t* data, size_t capacity, size_t charged) = 0;
};

// A request buffer on loan: `size()` usable bytes at `data()`. Move-only;
// destroying it hands the memory and its budget charge back to the releaser
// that issued it. An empty (default-constructed) lease owns nothing. A
// charge-only lease (no data, `charged()` bytes) accounts for memory that
// lives elsewhere, such as backend pages pinned by a reply.
class BufferLease {
 public:
  BufferLease() = default;
  BufferLease(BufferReleaser* owner, uint8_t* data, size_t size,
              size_t capacity, size_t charged)
      : owner_(owner),
        data_(data),
        size_(size),
        capacity_(capacity),
        charged_(charged) {}
  BufferLease(BufferLease&& o) noexcept { *this = std::move(o); }
  BufferLease& operator=(BufferLease&& o) noexcept {
    if (this != &o) {
      Reset();
      owner_ = std::exchange(o.owner_, nullptr);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      capacity_ = std::exchange(o.capacity_, 0);
      charged_ = std::exchange(o.charged_, 0);
    }
    return *this;
  }
  BufferLease(const BufferLease&) = delete;
  BufferLease& operator=(const BufferLease&) = delete;
  ~BufferLease() { Reset(); }

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  size_t charged() const { return charged_; }
  std::span<uint8_t> span() const { return {data_, size_}; }
  // Whether it holds memory (false for a charge-only lease).
  explicit operator bool() const { return data_ != nullptr; }
  // Whether it holds anything: memory or a budget charge.
  bool holds() const { return owner_ != nullptr; }

  // Returns the memory now.
  void Reset() {
    if (owner_ != nullptr) owner_->Release(data_, capacity_, charged_);
    owner_ = nullptr;
    data_ = nullptr;
    size_ = capacity_ = charged_ = 0;
  }

 private:
  BufferReleaser* owner_ = nullptr;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t capacity_ = 0;
  size_t charged_ = 0;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BUFFER_BUFFER_LEASE_H_
