#include "lib/backend/io_ring.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "lib/util/errors.h"
#include "lib/util/mutex.h"

namespace nbdmgr {
namespace {

namespace asio = boost::asio;

// Files registered per ring; a process with more open file exports uses
// plain descriptors for the rest.
constexpr unsigned kFileSlots = 64;
// Completion queue entries per ring.
constexpr unsigned kCompletionEntries = 8192;
// Completions handled per peek.
constexpr unsigned kReapBatch = 64;
// Reads at least this long go to the kernel's workers (IOSQE_ASYNC).
constexpr uint32_t kWorkerReadMin = 256 * 1024;

// The live rings, for ForgetFile. A ring removes itself in its destructor,
// under the mutex, so a pointer found here is alive while it is held.
Mutex& RingsMutex() {
  static Mutex* mu = new Mutex;
  return *mu;
}
std::vector<IoRing*>& Rings() ABSL_EXCLUSIVE_LOCKS_REQUIRED(RingsMutex()) {
  static auto* rings = new std::vector<IoRing*>;
  return *rings;
}

bool Probe() {
  const char* off = std::getenv("NBDMGR_DISABLE_IO_URING");
  if (off != nullptr && std::string_view(off) == "1") return false;
  io_uring ring;
  if (io_uring_queue_init(4, &ring, 0) != 0) return false;
  bool ok = false;
  if (io_uring_probe* p = io_uring_get_probe_ring(&ring)) {
    ok = io_uring_opcode_supported(p, IORING_OP_READ) &&
         io_uring_opcode_supported(p, IORING_OP_WRITE) &&
         io_uring_opcode_supported(p, IORING_OP_FSYNC);
    io_uring_free_probe(p);
  }
  // A sandbox may allow setting a ring up but not entering it: run a NOP.
  io_uring_sqe* sqe = ok ? io_uring_get_sqe(&ring) : nullptr;
  io_uring_cqe* cqe = nullptr;
  if (sqe != nullptr) {
    io_uring_prep_nop(sqe);
    ok = io_uring_submit_and_wait(&ring, 1) == 1 &&
         io_uring_peek_cqe(&ring, &cqe) == 0 && cqe->res == 0;
  } else {
    ok = false;
  }
  io_uring_queue_exit(&ring);
  return ok;
}

}  // namespace

bool IoRing::Supported() {
  static const bool supported = Probe();
  return supported;
}

uint64_t IoRing::NewFileId() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

IoRing::IoRing(asio::io_context& ctx) : ctx_(ctx), watch_(ctx), retry_(ctx) {}

absl::StatusOr<std::shared_ptr<IoRing>> IoRing::Create(asio::io_context& ctx,
                                                       unsigned entries) {
  std::shared_ptr<IoRing> r(new IoRing(ctx));
  // Completions are not bounded by the submission queue (every connection
  // has requests in flight): a large completion queue keeps them from
  // overflowing into kernel allocations.
  // COOP_TASKRUN: a completion from the kernel's workers (buffered writes on
  // ext4, fdatasync) does not interrupt the io thread with an IPI; it is
  // posted at the thread's next system call, or wakes it if it sleeps. The
  // io thread makes a system call per batch anyway. TASKRUN_FLAG tells
  // liburing's peek to collect such completions. Kernels before 5.19 refuse
  // the flags: set up without them.
  io_uring_params params{};
  params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN |
                 IORING_SETUP_TASKRUN_FLAG;
  params.cq_entries = kCompletionEntries;
  int rc = io_uring_queue_init_params(entries, &r->ring_, &params);
  if (rc == -EINVAL) {
    params = io_uring_params{};
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = kCompletionEntries;
    rc = io_uring_queue_init_params(entries, &r->ring_, &params);
  }
  if (rc < 0) return ErrnoStatus(-rc, "io_uring_queue_init");
  r->ring_ready_ = true;
  if (io_uring_register_files_sparse(&r->ring_, kFileSlots) == 0) {
    r->slots_.assign(kFileSlots, 0);
  }
  int fd = ::fcntl(r->ring_.ring_fd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, "dup io_uring descriptor");
  boost::system::error_code ec;
  r->watch_.assign(fd, ec);
  if (ec) {
    ::close(fd);
    return absl::InternalError("cannot watch the io_uring: " + ec.message());
  }
  {
    MutexLock lock(&RingsMutex());
    Rings().push_back(r.get());
  }
  r->Arm();
  return r;
}

IoRing::~IoRing() {
  {
    MutexLock lock(&RingsMutex());
    std::erase(Rings(), this);
  }
  if (!ring_ready_) return;
  // Nothing may be left pointing at buffers that are about to go.
  while (in_flight_ > 0) {
    if (queued_ > 0) Submit();
    if (in_flight_ == queued_) break;  // the kernel took none: nothing to wait
    io_uring_cqe* cqe = nullptr;
    if (int rc = io_uring_wait_cqe(&ring_, &cqe); rc < 0 && rc != -EINTR) {
      break;
    }
    Reap();
  }
  boost::system::error_code ec;
  watch_.close(ec);
  retry_.cancel();
  io_uring_queue_exit(&ring_);
}

void IoRing::ForgetFile(uint64_t id) {
  MutexLock lock(&RingsMutex());
  for (IoRing* r : Rings()) {
    asio::post(r->ctx_, [w = r->weak_from_this(), id] {
      if (std::shared_ptr<IoRing> ring = w.lock()) ring->Forget(id);
    });
  }
}

void IoRing::Forget(uint64_t id) {
  auto it = std::find(slots_.begin(), slots_.end(), id);
  if (it == slots_.end()) return;
  int none = -1;
  io_uring_register_files_update(
      &ring_, static_cast<unsigned>(it - slots_.begin()), &none, 1);
  *it = 0;
}

int IoRing::SlotOf(const RingFile& f) {
  if (slots_.empty()) return -1;
  auto it = std::find(slots_.begin(), slots_.end(), f.id);
  if (it != slots_.end()) return static_cast<int>(it - slots_.begin());
  it = std::find(slots_.begin(), slots_.end(), 0);
  if (it == slots_.end()) return -1;  // table full: plain descriptor
  int fd = f.fd;
  const auto slot = static_cast<unsigned>(it - slots_.begin());
  if (io_uring_register_files_update(&ring_, slot, &fd, 1) != 1) return -1;
  *it = f.id;
  return static_cast<int>(slot);
}

template <typename Prep>
void IoRing::Queue(const RingFile& f, RingOp* op, Prep prep) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {  // the ring is full: hand the kernel what is queued
    Submit();
    sqe = io_uring_get_sqe(&ring_);
  }
  if (sqe == nullptr) {
    // The kernel takes nothing (out of memory): fail this operation rather
    // than spin on the io thread.
    op->OnCqe(-EBUSY);
    return;
  }
  const int slot = SlotOf(f);
  prep(sqe, slot >= 0 ? slot : f.fd);
  if (slot >= 0) sqe->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data(sqe, op);
  ++queued_;
  ++in_flight_;
  ScheduleSubmit();
}

void IoRing::Read(const RingFile& f, uint64_t offset, void* buf,
                  uint32_t length, RingOp* op) {
  Queue(f, op, [&](io_uring_sqe* sqe, int fd) {
    io_uring_prep_read(sqe, fd, buf, length, offset);
    // A large read is copied by a kernel worker, not inside this thread's
    // io_uring_enter: the io thread goes on sending earlier replies
    // meanwhile (page-cache copies of 1 MiB would otherwise serialise with
    // the socket's).
    if (length >= kWorkerReadMin) sqe->flags |= IOSQE_ASYNC;
  });
}

void IoRing::Write(const RingFile& f, uint64_t offset, const void* buf,
                   uint32_t length, int rw_flags, RingOp* op) {
  Queue(f, op, [&](io_uring_sqe* sqe, int fd) {
    io_uring_prep_write(sqe, fd, buf, length, offset);
    sqe->rw_flags = rw_flags;
  });
}

void IoRing::Fdatasync(const RingFile& f, RingOp* op) {
  Queue(f, op, [&](io_uring_sqe* sqe, int fd) {
    io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
  });
}

void IoRing::ScheduleSubmit() {
  if (submit_scheduled_) return;
  submit_scheduled_ = true;
  // After the handlers already queued on this thread, which may queue more
  // operations into the same batch.
  asio::post(ctx_, [w = weak_from_this()] {
    if (std::shared_ptr<IoRing> r = w.lock()) {
      r->submit_scheduled_ = false;
      r->Submit();
    }
  });
}

void IoRing::Submit() {
  while (queued_ > 0) {
    int n = io_uring_submit(&ring_);
    if (n > 0) {
      queued_ -= std::min<size_t>(queued_, static_cast<size_t>(n));
      continue;
    }
    if (n == -EINTR) continue;
    // EAGAIN/EBUSY (no memory for requests, completions backed up), ENOMEM
    // and the like: the entries stay queued. Make room by handling what has
    // completed, and try again shortly; never block the io thread here.
    Reap();
    if (!retry_armed_) {
      retry_armed_ = true;
      retry_.expires_after(std::chrono::milliseconds(10));
      retry_.async_wait([w = weak_from_this()](boost::system::error_code ec) {
        std::shared_ptr<IoRing> r = w.lock();
        if (ec || r == nullptr) return;
        r->retry_armed_ = false;
        r->Submit();
      });
    }
    break;
  }
  Reap();
}

void IoRing::Reap() {
  io_uring_cqe* cqes[kReapBatch];
  std::pair<RingOp*, int> done[kReapBatch];
  for (;;) {
    const unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, kReapBatch);
    if (n == 0) return;
    for (unsigned i = 0; i < n; ++i) {
      done[i] = {static_cast<RingOp*>(io_uring_cqe_get_data(cqes[i])),
                 cqes[i]->res};
    }
    io_uring_cq_advance(&ring_, n);
    in_flight_ -= n;
    // Completions may queue more operations or resume their callers.
    for (unsigned i = 0; i < n; ++i) done[i].first->OnCqe(done[i].second);
  }
}

void IoRing::Arm() {
  watch_.async_wait(asio::posix::stream_descriptor::wait_read,
                    [w = weak_from_this()](boost::system::error_code ec) {
                      if (ec == asio::error::operation_aborted ||
                          ec == asio::error::bad_descriptor) {
                        return;  // closed: the ring is going away
                      }
                      if (std::shared_ptr<IoRing> r = w.lock()) {
                        r->Reap();
                        r->Arm();
                      }
                    });
  // A completion posted before the wait was registered raised its edge
  // with nobody waiting: look now.
  if (io_uring_cq_ready(&ring_) > 0) {
    asio::post(ctx_, [w = weak_from_this()] {
      if (std::shared_ptr<IoRing> r = w.lock()) r->Reap();
    });
  }
}

}  // namespace nbdmgr
