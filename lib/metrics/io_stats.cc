#include "lib/metrics/io_stats.h"

#include <algorithm>
#include <limits>

#include "lib/util/mutex.h"

namespace nbdmgr {

std::string_view NameOf(IoOp op) {
  static constexpr std::string_view kNames[kNumIoOps] = {
      "read",         "write", "flush",        "trim",
      "write_zeroes", "cache", "block_status", "other"};
  return kNames[static_cast<size_t>(op)];
}

std::string_view NameOf(IoResult r) {
  static constexpr std::string_view kNames[kNumIoResults] = {
      "ok",     "EPERM",     "EIO",     "ENOMEM",    "EINVAL",
      "ENOSPC", "EOVERFLOW", "ENOTSUP", "ESHUTDOWN", "other"};
  return kNames[static_cast<size_t>(r)];
}

double LatencyBucketBound(size_t i) {
  return i < kLatencyBounds.size() ? kLatencyBounds[i]
                                   : std::numeric_limits<double>::infinity();
}

size_t LatencyBucket(uint64_t ns) {
  // Bounds in whole nanoseconds, computed once.
  static const std::array<uint64_t, kLatencyBounds.size()> kBoundsNs = [] {
    std::array<uint64_t, kLatencyBounds.size()> b{};
    for (size_t i = 0; i < b.size(); ++i) {
      b[i] = static_cast<uint64_t>(kLatencyBounds[i] * 1e9 + 0.5);
    }
    return b;
  }();
  return std::lower_bound(kBoundsNs.begin(), kBoundsNs.end(), ns) -
         kBoundsNs.begin();
}

IoCounts& IoCounts::operator+=(const IoCounts& o) {
  for (size_t op = 0; op < kNumIoOps; ++op) {
    for (size_t r = 0; r < kNumIoResults; ++r) {
      requests[op][r] += o.requests[op][r];
      backend_errors[op][r] += o.backend_errors[op][r];
    }
    for (size_t b = 0; b < kNumLatencyBuckets; ++b) {
      latency[op][b] += o.latency[op][b];
    }
    latency_sum_ns[op] += o.latency_sum_ns[op];
  }
  bytes_read += o.bytes_read;
  bytes_written += o.bytes_written;
  in_flight += o.in_flight;
  return *this;
}

uint64_t IoCounts::total_requests(IoOp op) const {
  uint64_t n = 0;
  for (uint64_t v : requests[static_cast<size_t>(op)]) n += v;
  return n;
}

uint64_t IoCounts::total_requests() const {
  uint64_t n = 0;
  for (size_t op = 0; op < kNumIoOps; ++op) {
    n += total_requests(static_cast<IoOp>(op));
  }
  return n;
}

uint64_t IoCounts::total_latency_ns() const {
  uint64_t n = 0;
  for (uint64_t v : latency_sum_ns) n += v;
  return n;
}

uint64_t IoCounts::errors() const {
  uint64_t n = 0;
  for (size_t op = 0; op < kNumIoOps; ++op) {
    for (size_t r = 1; r < kNumIoResults; ++r) n += requests[op][r];
  }
  return n;
}

uint64_t IoCounts::backend_errors_total() const {
  uint64_t n = 0;
  for (size_t op = 0; op < kNumIoOps; ++op) {
    for (uint64_t v : backend_errors[op]) n += v;
  }
  return n;
}

void ConnectionIoStats::Record(IoOp op, IoResult result, uint64_t bytes,
                               uint64_t latency_ns, bool backend_error) {
  const size_t o = static_cast<size_t>(op);
  Bump(requests_[o][static_cast<size_t>(result)], 1);
  if (backend_error && result != IoResult::kOk) {
    Bump(backend_errors_[o][static_cast<size_t>(result)], 1);
  }
  Bump(latency_[o][LatencyBucket(latency_ns)], 1);
  Bump(latency_sum_ns_[o], latency_ns);
  if (result == IoResult::kOk) {
    if (op == IoOp::kRead) Bump(bytes_read_, bytes);
    if (op == IoOp::kWrite) Bump(bytes_written_, bytes);
  }
}

void ConnectionIoStats::AddTo(IoCounts* out) const {
  constexpr auto kRelaxed = std::memory_order_relaxed;
  for (size_t op = 0; op < kNumIoOps; ++op) {
    for (size_t r = 0; r < kNumIoResults; ++r) {
      out->requests[op][r] += requests_[op][r].load(kRelaxed);
      out->backend_errors[op][r] += backend_errors_[op][r].load(kRelaxed);
    }
    for (size_t b = 0; b < kNumLatencyBuckets; ++b) {
      out->latency[op][b] += latency_[op][b].load(kRelaxed);
    }
    out->latency_sum_ns[op] += latency_sum_ns_[op].load(kRelaxed);
  }
  out->bytes_read += bytes_read_.load(kRelaxed);
  out->bytes_written += bytes_written_.load(kRelaxed);
  out->in_flight += in_flight_.load(kRelaxed);
}

void ExportIoStats::Attach(const ConnectionIoStats* c) {
  MutexLock lock(&mu_);
  live_.push_back(c);
}

void ExportIoStats::Detach(const ConnectionIoStats* c) {
  IoCounts final_counts;
  c->AddTo(&final_counts);
  final_counts.in_flight = 0;
  MutexLock lock(&mu_);
  retired_ += final_counts;
  live_.erase(std::remove(live_.begin(), live_.end(), c), live_.end());
}

IoCounts ExportIoStats::Snapshot() const {
  MutexLock lock(&mu_);
  IoCounts out = retired_;
  for (const ConnectionIoStats* c : live_) c->AddTo(&out);
  return out;
}

}  // namespace nbdmgr
