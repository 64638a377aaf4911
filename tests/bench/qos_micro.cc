// Micro-benchmark: what QoS costs one request, in nanoseconds.
//
// An export without limits or a group pays one relaxed atomic load per
// request (QosGate::engaged(), checked in Transmission::Admit); a limited
// export whose requests fit pays a clock read and Throttle::Enter (a mutex
// and six buckets), twice with a group. Waiting requests cost a timer on
// top, which is what limiting means.
//
// Usage: build/tests/bench_qos [iterations]

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "lib/qos/qos_gate.h"
#include "lib/util/clock.h"

namespace {

template <typename Fn>
double NsPerCall(long n, Fn fn) {
  auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < n; ++i) fn(i);
  auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::nano>(t1 - t0).count() /
         static_cast<double>(n);
}

struct NeverWaits : nbdmgr::ThrottleWaiter {
  void Wake() override {}
};

}  // namespace

int main(int argc, char** argv) {
  using nbdmgr::QosLimitKind;
  const long n = argc > 1 ? std::atol(argv[1]) : 20'000'000;
  volatile long sink = 0;

  nbdmgr::QosGate unlimited;
  const double check = NsPerCall(n, [&](long) {
    if (unlimited.engaged()) sink = sink + 1;
  });

  // Limits far above what this loop reaches: every request fits.
  nbdmgr::QosLimits high;
  high[QosLimitKind::kIopsTotal] = {nbdmgr::kMaxQosRate, nbdmgr::kMaxQosRate};
  high[QosLimitKind::kBpsTotal] = {nbdmgr::kMaxQosRate, nbdmgr::kMaxQosRate};
  nbdmgr::QosGate limited(high);
  NeverWaits w;
  const double fits = NsPerCall(n, [&](long i) {
    if (limited.engaged() &&
        limited.own().Enter(w, {(i & 1) != 0, 4096}, nbdmgr::SteadyNowNs()) !=
            nbdmgr::Throttle::kAdmitted) {
      sink = sink + 1;
    }
  });

  auto group = std::make_shared<nbdmgr::QosGroup>("g", high);
  limited.SetGroup(group);
  const double with_group = NsPerCall(n, [&](long i) {
    if (!limited.engaged()) return;
    const int64_t now = nbdmgr::SteadyNowNs();
    if (limited.own().Enter(w, {(i & 1) != 0, 4096}, now) !=
        nbdmgr::Throttle::kAdmitted) {
      sink = sink + 1;
    }
    std::shared_ptr<nbdmgr::QosGroup> g = limited.group();
    if (g->throttle().Enter(w, {(i & 1) != 0, 4096}, now) !=
        nbdmgr::Throttle::kAdmitted) {
      sink = sink + 1;
    }
  });

  std::printf("%-34s %8s\n", "case", "ns/req");
  std::printf("%-34s %8.2f\n", "unlimited export (the check)", check);
  std::printf("%-34s %8.2f\n", "limited, request fits", fits);
  std::printf("%-34s %8.2f\n", "limited + group, request fits", with_group);
  std::printf("(waits: %ld)\n", static_cast<long>(sink));
  return 0;
}
