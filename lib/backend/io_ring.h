#ifndef NBDMGR_LIB_BACKEND_IO_RING_H_
#define NBDMGR_LIB_BACKEND_IO_RING_H_

#include <liburing.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace nbdmgr {

// One queued operation: OnCqe(result) runs once the kernel has finished it,
// with the io_uring result (bytes moved, or -errno), on the ring's thread.
// The object must stay alive (and the buffers it names) until then.
class RingOp {
 public:
  virtual void OnCqe(int result) = 0;

 protected:
  ~RingOp() = default;
};

// A file a backend does I/O on through rings: its descriptor and an id
// unique for the life of the process (ids are never reused, unlike
// descriptor numbers), under which each ring registers it.
struct RingFile {
  int fd = -1;
  uint64_t id = 0;
};

// An io_uring instance serving one io_context (one io thread): operations
// are queued by code running on that thread, submitted together in one
// io_uring_enter when the thread's current handlers are done (one post per
// batch), and their completions run on the same thread, from the
// context's own event loop. Completions that the kernel finishes during
// submission (reads from the page cache) are handled at once; others wake
// the context through the ring's descriptor, which the context's reactor
// watches, so no thread ever blocks on the ring.
//
// Files are registered with the ring (IOSQE_FIXED_FILE) on first use, saving
// the kernel a descriptor lookup and a shared reference count per
// operation; ForgetFile releases them when the file closes.
//
// Not thread-safe: every member but ForgetFile runs on the context's thread.
// A live ring keeps its context's run() going (it always waits on its
// descriptor): destroy it on that thread, or after the context was
// stopped, and before the io_context, once no operation will be queued;
// the destructor waits for those in flight and runs their completions.
class IoRing : public std::enable_shared_from_this<IoRing> {
 public:
  // Whether io_uring can be used in this process: probed once by creating
  // a small ring (a kernel without it, kernel.io_uring_disabled, or a
  // seccomp filter that blocks it say no). NBDMGR_DISABLE_IO_URING=1 in the
  // environment also says no (tests use it for the fallback path).
  static bool Supported();

  // A ring of `entries` submission slots watched by `ctx`.
  static absl::StatusOr<std::shared_ptr<IoRing>> Create(
      boost::asio::io_context& ctx, unsigned entries = 256);
  ~IoRing();
  IoRing(const IoRing&) = delete;
  IoRing& operator=(const IoRing&) = delete;

  // Queue a read / a write (rw_flags: RWF_DSYNC and the like) of `length`
  // bytes at `offset`, or an fdatasync.
  void Read(const RingFile& f, uint64_t offset, void* buf, uint32_t length,
            RingOp* op);
  void Write(const RingFile& f, uint64_t offset, const void* buf,
             uint32_t length, int rw_flags, RingOp* op);
  void Fdatasync(const RingFile& f, RingOp* op);

  // Drops the registration of file `id` from every ring (any thread; the
  // rings do it on their own threads). Call when the file closes: until
  // then a registered file stays open in the kernel.
  static void ForgetFile(uint64_t id);
  // A fresh file id.
  static uint64_t NewFileId();

  // Operations queued or in flight, and files registered, for tests.
  size_t in_flight() const { return in_flight_; }
  size_t registered_files() const {
    return slots_.size() - static_cast<size_t>(std::count(
                               slots_.begin(), slots_.end(), uint64_t{0}));
  }

 private:
  explicit IoRing(boost::asio::io_context& ctx);
  // Takes a submission entry (submitting what is queued when the ring is
  // full), calls prep(sqe, fd) with what to name `f` by (its registered
  // slot, else its descriptor), and queues it for `op`. Fails `op` with
  // -EBUSY if the kernel takes nothing.
  template <typename Prep>
  void Queue(const RingFile& f, RingOp* op, Prep prep);
  int SlotOf(const RingFile& f);
  void Forget(uint64_t id);
  void ScheduleSubmit();
  void Submit();
  void Reap();
  void Arm();

  boost::asio::io_context& ctx_;
  io_uring ring_{};
  bool ring_ready_ = false;
  boost::asio::posix::stream_descriptor watch_;  // a dup of the ring's fd
  bool submit_scheduled_ = false;
  boost::asio::steady_timer retry_;  // a submission that failed, again
  bool retry_armed_ = false;
  size_t queued_ = 0;     // prepared, not yet submitted
  size_t in_flight_ = 0;  // prepared, completion not yet run
  // Registered files: slot i holds file id slots_[i] (0: free).
  std::vector<uint64_t> slots_;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_BACKEND_IO_RING_H_
