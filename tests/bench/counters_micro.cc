// Micro-benchmark: what counting costs one request, in nanoseconds.
// The request path pays one steady-clock read when the header arrives and,
// per reply, one clock read per written batch plus ConnectionIoStats::Record
// (plain loads and stores of single-writer counters). Compare the result
// with the server CPU time per request that tests/bench/metrics.sh prints
// (ms/GB / requests per GB).
//
// Usage: build/tests/bench_counters [iterations]

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "lib/metrics/io_stats.h"
#include "lib/nbd/reply_writer.h"

namespace {

template <typename Fn>
double NsPerCall(long n, Fn fn) {
  auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < n; ++i) fn(i);
  auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::nano>(t1 - t0).count() /
         static_cast<double>(n);
}

}  // namespace

int main(int argc, char** argv) {
  const long n = argc > 1 ? std::atol(argv[1]) : 50'000'000;
  nbdmgr::ExportIoStats e;
  nbdmgr::ScopedIoStats s(&e);
  nbdmgr::ConnectionIoStats* c = s.get();
  volatile int64_t sink = 0;
  double clock =
      NsPerCall(n, [&](long) { sink = sink + nbdmgr::nbd::SteadyNowNs(); });
  double record = NsPerCall(n, [&](long i) {
    c->Record(nbdmgr::IoOp::kRead, nbdmgr::IoResult::kOk, 4096,
              static_cast<uint64_t>(i & 0xfffff) * 37);
  });
  double in_flight = NsPerCall(
      n, [&](long i) { c->SetInFlight(static_cast<uint64_t>(i & 63)); });
  // Per request: two clock reads (header, batch; a batch often covers several
  // replies, so this is an upper bound), one Record, two in-flight updates.
  double per_request = 2 * clock + record + 2 * in_flight;
  std::printf("steady clock read     %6.1f ns\n", clock);
  std::printf("Record()              %6.1f ns\n", record);
  std::printf("SetInFlight()         %6.1f ns\n", in_flight);
  std::printf("per request (bound)   %6.1f ns\n", per_request);
  std::printf("(%ld iterations; %llu reads counted)\n", n,
              static_cast<unsigned long long>(
                  e.Snapshot().total_requests(nbdmgr::IoOp::kRead)));
  return 0;
}
