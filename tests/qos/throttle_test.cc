#include "lib/qos/throttle.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <thread>
#include <vector>

#include "lib/qos/qos_gate.h"

namespace nbdmgr {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kSec = 1'000'000'000;

struct FakeWaiter : ThrottleWaiter {
  void Wake() override { ++wakes; }
  int wakes = 0;
};

QosLimits Limit(QosLimitKind k, uint64_t rate, uint64_t burst = 0) {
  QosLimits l;
  l[k] = RateLimit{rate, burst};
  return l;
}

const QosCost kRead4k{false, 4096};
const QosCost kWrite4k{true, 4096};

TEST(ThrottleTest, UnlimitedAdmitsEverythingAtOnce) {
  Throttle t;
  EXPECT_FALSE(t.limited());
  FakeWaiter w;
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(t.Enter(w, {true, 1u << 30}, 0), Throttle::kAdmitted);
  }
  EXPECT_EQ(t.stats().waiting, 0u);
}

TEST(ThrottleTest, BurstGoesAtOnceThenOnePerInterval) {
  Throttle t(Limit(QosLimitKind::kIopsTotal, 100, 10), 0);
  EXPECT_TRUE(t.limited());
  FakeWaiter w;
  for (int i = 0; i < 10; ++i)
    ASSERT_EQ(t.Enter(w, kRead4k, 0), Throttle::kAdmitted);
  // The 11th waits for one operation's room: 1/100 s.
  EXPECT_EQ(t.Enter(w, kRead4k, 0), 10 * kMs);
  EXPECT_EQ(t.stats().waiting, 1u);
  EXPECT_EQ(t.Poll(w, 10 * kMs - 1), 10 * kMs);  // early: same deadline
  EXPECT_EQ(t.Poll(w, 10 * kMs), Throttle::kAdmitted);
  EXPECT_EQ(t.stats().waiting, 0u);
  // The next one is due another 10 ms on.
  FakeWaiter w2;
  EXPECT_EQ(t.Enter(w2, kRead4k, 10 * kMs), 20 * kMs);
}

TEST(ThrottleTest, DefaultBurstIsATenthOfASecond) {
  Throttle t(Limit(QosLimitKind::kIopsTotal, 1000), 0);
  FakeWaiter w;
  int admitted = 0;
  while (t.Enter(w, kRead4k, 0) == Throttle::kAdmitted) ++admitted;
  EXPECT_EQ(admitted, 100);
}

// A closed loop of `clients` waiters, each sending its next request when
// the last is admitted, in simulated time: what each limit admits in a
// window never exceeds rate * window + burst.
struct Sim {
  Throttle& t;
  int64_t now = 0;
  std::vector<int64_t> admitted_at{};
  std::vector<uint64_t> bytes{};
  std::vector<uint64_t> per_client{};  // admissions of each client

  // `flows[i]`: client i's flow (default: all one flow).
  void Run(int clients, QosCost cost, int64_t until,
           const std::vector<const void*>& flows = {}) {
    struct Client {
      FakeWaiter w;
      int64_t due = 0;
      bool waiting = false;
    };
    std::deque<Client> cs(clients);
    per_client.assign(clients, 0);
    while (now < until) {
      int64_t next = Throttle::kNever;
      for (int i = 0; i < clients; ++i) {
        Client& c = cs[i];
        if (!c.waiting) {
          int64_t r =
              t.Enter(c.w, cost, now, flows.empty() ? nullptr : flows[i]);
          if (r == Throttle::kAdmitted) {
            ++per_client[i];
            admitted_at.push_back(now);
            bytes.push_back(cost.bytes);
            next = std::min(next, now);
            continue;
          }
          c.waiting = true;
          c.due = r;
        } else if (c.due <= now || c.w.wakes > 0) {
          c.w.wakes = 0;
          int64_t r = t.Poll(c.w, now);
          if (r == Throttle::kAdmitted) {
            c.waiting = false;
            ++per_client[i];
            admitted_at.push_back(now);
            bytes.push_back(cost.bytes);
            next = std::min(next, now);
            continue;
          }
          c.due = r;
        }
        next = std::min(next, c.due);
      }
      // Advance to the next deadline (at least 1 us, like a real timer).
      now = std::max(now + 1000, next == Throttle::kNever ? now + kMs : next);
    }
  }

  // Most admitted in any window of `w` ns starting at an admission.
  uint64_t MaxInWindow(int64_t w, bool count_bytes) const {
    uint64_t best = 0, sum = 0;
    size_t j = 0;
    for (size_t i = 0; i < admitted_at.size(); ++i) {
      sum += count_bytes ? bytes[i] : 1;
      while (admitted_at[i] - admitted_at[j] >= w) {
        sum -= count_bytes ? bytes[j] : 1;
        ++j;
      }
      best = std::max(best, sum);
    }
    return best;
  }
};

TEST(ThrottleTest, IopsStayWithinRateTimesWindowPlusBurst) {
  Throttle t(Limit(QosLimitKind::kIopsTotal, 1000, 50), 0);
  Sim sim{t};
  sim.Run(8, kRead4k, 5 * kSec);
  const double n = static_cast<double>(sim.admitted_at.size());
  EXPECT_NEAR(n, 5000 + 50, 5);  // the burst, then the rate
  for (int64_t w : {kMs, 10 * kMs, 100 * kMs, kSec, 3 * kSec}) {
    EXPECT_LE(sim.MaxInWindow(w, false), 1000 * w / kSec + 50 + 1) << w;
  }
}

TEST(ThrottleTest, BandwidthStaysWithinRateTimesWindowPlusBurst) {
  const uint64_t rate = 50 << 20, burst = 1 << 20;
  Throttle t(Limit(QosLimitKind::kBpsTotal, rate, burst), 0);
  Sim sim{t};
  sim.Run(4, {false, 64 << 10}, 4 * kSec);
  uint64_t total = 0;
  for (uint64_t b : sim.bytes) total += b;
  EXPECT_NEAR(static_cast<double>(total), 4.0 * rate + burst, 2.0 * (64 << 10));
  for (int64_t w : {10 * kMs, 100 * kMs, kSec}) {
    EXPECT_LE(sim.MaxInWindow(w, true),
              static_cast<uint64_t>(static_cast<double>(rate) * w / kSec) +
                  burst + (64 << 10))
        << w;
  }
}

TEST(ThrottleTest, RequestLargerThanTheBurstGoesWhenTheBucketIsEmpty) {
  Throttle t(Limit(QosLimitKind::kBpsTotal, 1 << 20, 64 << 10), 0);
  FakeWaiter w;
  ASSERT_EQ(t.Enter(w, {true, 4 << 20}, 0), Throttle::kAdmitted);
  // 4 MiB at 1 MiB/s: the bucket is empty again after 4 s.
  FakeWaiter w2;
  const int64_t due = t.Enter(w2, {true, 4 << 20}, 0);
  EXPECT_NEAR(static_cast<double>(due), 4.0 * kSec, 1e3);
  EXPECT_EQ(t.Poll(w2, due), Throttle::kAdmitted);
}

TEST(ThrottleTest, ReadAndWriteLimitsAreSeparate) {
  QosLimits l;
  l[QosLimitKind::kIopsRead] = {10, 1};
  l[QosLimitKind::kBpsWrite] = {1 << 20, 8192};
  Throttle t(l, 0);
  FakeWaiter w;
  EXPECT_EQ(t.Enter(w, kRead4k, 0), Throttle::kAdmitted);
  EXPECT_EQ(t.Enter(w, kWrite4k, 0), Throttle::kAdmitted);  // reads spent
  EXPECT_EQ(t.Enter(w, kWrite4k, 0), Throttle::kAdmitted);
  FakeWaiter r;
  EXPECT_EQ(t.Enter(r, kRead4k, 0), 100 * kMs);  // 1/10 s
  // A write behind a waiting read waits its turn (arrival order), even
  // though its own limits would let it pass.
  FakeWaiter w2;
  EXPECT_EQ(t.Enter(w2, {true, 0}, 0), Throttle::kNever);
  EXPECT_EQ(t.Poll(r, 100 * kMs), Throttle::kAdmitted);
  EXPECT_EQ(w2.wakes, 1);  // admitted behind it, and told so
  EXPECT_EQ(t.Poll(w2, 100 * kMs), Throttle::kAdmitted);
}

TEST(ThrottleTest, WaitersAreServedInArrivalOrder) {
  Throttle t(Limit(QosLimitKind::kIopsTotal, 100, 1), 0);
  FakeWaiter first;
  ASSERT_EQ(t.Enter(first, kRead4k, 0), Throttle::kAdmitted);
  std::vector<FakeWaiter> ws(5);
  EXPECT_EQ(t.Enter(ws[0], kRead4k, 0), 10 * kMs);
  for (int i = 1; i < 5; ++i)
    EXPECT_EQ(t.Enter(ws[i], kRead4k, 0), Throttle::kNever);
  int64_t now = 0;
  for (int i = 0; i < 5; ++i) {
    // Only the head gets in; the others' polls say kNever.
    for (int j = i + 1; j < 5; ++j)
      EXPECT_EQ(t.Poll(ws[j], now + 10 * kMs), Throttle::kNever);
    now += 10 * kMs;
    EXPECT_EQ(t.Poll(ws[i], now), Throttle::kAdmitted) << i;
    if (i + 1 < 5) {
      EXPECT_GE(ws[i + 1].wakes, 1) << "the new head is woken";
    }
  }
}

TEST(ThrottleTest, FlowsAreServedInTurns) {
  // Flow A queues four requests, then flow B one, then A a fifth: B's goes
  // second, in the round being served, not behind all of A's.
  Throttle t(Limit(QosLimitKind::kIopsTotal, 100, 1), 0);
  FakeWaiter first;
  ASSERT_EQ(t.Enter(first, kRead4k, 0), Throttle::kAdmitted);
  static char a, b;
  std::vector<FakeWaiter> ws(6);
  const std::vector<const void*> flow = {&a, &a, &a, &a, &b, &a};
  for (int i = 0; i < 6; ++i) t.Enter(ws[i], kRead4k, 0, flow[i]);
  EXPECT_EQ(t.stats().waiting, 6u);
  const std::vector<int> expected = {0, 4, 1, 2, 3, 5};
  int64_t now = 0;
  for (int i : expected) {
    now += 10 * kMs;
    for (int j = 0; j < 6; ++j) {
      if (j != i && t.queued(ws[j])) {
        EXPECT_EQ(t.Poll(ws[j], now), Throttle::kNever) << i << " " << j;
      }
    }
    EXPECT_EQ(t.Poll(ws[i], now), Throttle::kAdmitted) << i;
  }
  EXPECT_EQ(t.stats().waiting, 0u);
  // After the queue emptied, a request heads it; when it leaves, the next
  // moves up.
  FakeWaiter late_a, late_b;
  EXPECT_EQ(t.Enter(late_a, kRead4k, now, &a), 10 * kMs + now);
  EXPECT_EQ(t.Enter(late_b, kRead4k, now, &b), Throttle::kNever);
  t.Leave(late_a, now);
  EXPECT_EQ(t.Poll(late_b, now + 10 * kMs), Throttle::kAdmitted);
}

TEST(ThrottleTest, FlowsShareEquallyWhateverTheirConnections) {
  // A group's members in closed loops: one export with 8 connections, one
  // with 1. Each gets half, as qemu's throttle groups share per device.
  Throttle t(Limit(QosLimitKind::kIopsTotal, 1000), 0);
  static char big, small;
  std::vector<const void*> flows(8, &big);
  flows.push_back(&small);
  Sim sim{t};
  sim.Run(9, kRead4k, 10 * kSec, flows);
  uint64_t big_total = 0;
  for (int i = 0; i < 8; ++i) big_total += sim.per_client[i];
  const uint64_t small_total = sim.per_client[8];
  const uint64_t total = big_total + small_total;
  EXPECT_NEAR(static_cast<double>(small_total) / total, 0.5, 0.02)
      << big_total << " " << small_total;
  // Within the 8-connection export, its connections share alike.
  for (int i = 0; i < 8; ++i) {
    EXPECT_NEAR(static_cast<double>(sim.per_client[i]) / big_total, 1.0 / 8,
                0.01)
        << i;
  }
  // And the limit holds as before.
  EXPECT_LE(sim.MaxInWindow(kSec, false), 1000u + 100u + 1u);
  // One flow for all 9 (an export's own throttle): per connection.
  Throttle t2(Limit(QosLimitKind::kIopsTotal, 1000), 0);
  Sim one{t2};
  one.Run(9, kRead4k, 10 * kSec);
  EXPECT_NEAR(static_cast<double>(one.per_client[8]) /
                  static_cast<double>(one.admitted_at.size()),
              1.0 / 9, 0.01);
}

TEST(ThrottleTest, FlowsThatComeBackAtOnceDoNotStarveTheOthers) {
  // Two exports with one connection each send their next request as soon
  // as the last is admitted; a third has two connections. A flow admitted
  // in a round comes back in the next one, so the two cannot keep one
  // round going for ever: all three get a third.
  Throttle t(Limit(QosLimitKind::kIopsTotal, 1000), 0);
  static char two, one_a, one_b;
  Sim sim{t};
  sim.Run(4, kRead4k, 10 * kSec, {&two, &two, &one_a, &one_b});
  const double total = static_cast<double>(sim.admitted_at.size());
  EXPECT_NEAR((sim.per_client[0] + sim.per_client[1]) / total, 1.0 / 3, 0.02);
  EXPECT_NEAR(sim.per_client[2] / total, 1.0 / 3, 0.02);
  EXPECT_NEAR(sim.per_client[3] / total, 1.0 / 3, 0.02);
  EXPECT_GT(sim.per_client[1], sim.per_client[0] / 2) << "both connections";
}

TEST(ThrottleTest, AFlowWhoseWaiterLeftKeepsItsTurn) {
  // b's only waiter leaves (its connection closed): b's next request takes
  // the turn it left in this round, ahead of a's next one.
  Throttle t(Limit(QosLimitKind::kIopsTotal, 100, 1), 0);
  FakeWaiter first;
  ASSERT_EQ(t.Enter(first, kRead4k, 0), Throttle::kAdmitted);
  static char a, b;
  FakeWaiter a1, b1, a2, b2;
  t.Enter(a1, kRead4k, 0, &a);
  t.Enter(b1, kRead4k, 0, &b);
  t.Enter(a2, kRead4k, 0, &a);
  t.Leave(b1, 0);
  EXPECT_FALSE(t.queued(b1));
  t.Enter(b2, kRead4k, 0, &b);
  EXPECT_EQ(t.Poll(a1, 10 * kMs), Throttle::kAdmitted);
  EXPECT_EQ(t.Poll(a2, 20 * kMs), Throttle::kNever);
  EXPECT_EQ(t.Poll(b2, 20 * kMs), Throttle::kAdmitted);
  EXPECT_EQ(t.Poll(a2, 30 * kMs), Throttle::kAdmitted);
}

TEST(ThrottleTest, AFlowWhoseWaitersAllLeftGetsItsTurnsBack) {
  // a's queued requests all leave (say its export left the group): its
  // next one goes in the round after its last admission, not behind the
  // turns it gave up.
  Throttle t(Limit(QosLimitKind::kIopsTotal, 100, 1), 0);
  FakeWaiter first;
  ASSERT_EQ(t.Enter(first, kRead4k, 0), Throttle::kAdmitted);
  static char a, b;
  std::vector<FakeWaiter> as(3), bs(3);
  for (int i = 0; i < 3; ++i) {
    t.Enter(as[i], kRead4k, 0, &a);
    t.Enter(bs[i], kRead4k, 0, &b);
  }
  EXPECT_EQ(t.Poll(as[0], 10 * kMs), Throttle::kAdmitted);
  t.Leave(as[1], 10 * kMs);
  t.Leave(as[2], 10 * kMs);
  FakeWaiter a4;
  EXPECT_EQ(t.Enter(a4, kRead4k, 10 * kMs, &a), Throttle::kNever);
  EXPECT_EQ(t.Poll(bs[0], 20 * kMs), Throttle::kAdmitted);
  EXPECT_EQ(t.Poll(bs[1], 30 * kMs), Throttle::kAdmitted);
  EXPECT_EQ(t.Poll(bs[2], 40 * kMs), Throttle::kNever);
  EXPECT_EQ(t.Poll(a4, 40 * kMs), Throttle::kAdmitted);
  EXPECT_EQ(t.Poll(bs[2], 50 * kMs), Throttle::kAdmitted);
}

TEST(ThrottleTest, RaisingTheLimitWakesTheHeadAndAdmitsAtOnce) {
  Throttle t(Limit(QosLimitKind::kIopsTotal, 1, 1), 0);
  FakeWaiter a, b, c;
  ASSERT_EQ(t.Enter(a, kRead4k, 0), Throttle::kAdmitted);
  EXPECT_EQ(t.Enter(b, kRead4k, 0), kSec);
  EXPECT_EQ(t.Enter(c, kRead4k, 0), Throttle::kNever);
  t.SetLimits(Limit(QosLimitKind::kIopsTotal, 1000, 10), 1 * kMs);
  // The level (one operation) is kept, but the burst now holds more.
  EXPECT_GE(b.wakes + c.wakes, 1);
  EXPECT_EQ(t.Poll(b, 1 * kMs), Throttle::kAdmitted);
  EXPECT_EQ(t.Poll(c, 1 * kMs), Throttle::kAdmitted);
}

TEST(ThrottleTest, RemovingTheLimitsReleasesEveryWaiter) {
  Throttle t(Limit(QosLimitKind::kIopsTotal, 1, 1), 0);
  FakeWaiter a;
  ASSERT_EQ(t.Enter(a, kRead4k, 0), Throttle::kAdmitted);
  std::vector<FakeWaiter> ws(4);
  for (FakeWaiter& w : ws)
    EXPECT_NE(t.Enter(w, kRead4k, 0), Throttle::kAdmitted);
  t.SetLimits(QosLimits{}, 0);
  EXPECT_FALSE(t.limited());
  for (FakeWaiter& w : ws) {
    EXPECT_EQ(w.wakes, 1);
    EXPECT_EQ(t.Poll(w, 0), Throttle::kAdmitted);
  }
  EXPECT_EQ(t.stats().waiting, 0u);
}

TEST(ThrottleTest, LoweringTheLimitKeepsWhatWasSpent) {
  Throttle t(Limit(QosLimitKind::kIopsTotal, 1000, 100), 0);
  FakeWaiter w;
  for (int i = 0; i < 100; ++i)
    ASSERT_EQ(t.Enter(w, kRead4k, 0), Throttle::kAdmitted);
  // 100 operations in the bucket: at 10/s with a burst of 1, the next one
  // waits until it is empty, 10 s on.
  t.SetLimits(Limit(QosLimitKind::kIopsTotal, 10, 1), 0);
  FakeWaiter x;
  const int64_t due = t.Enter(x, kRead4k, 0);
  EXPECT_NEAR(static_cast<double>(due), 10.0 * kSec, 1e6);
}

TEST(ThrottleTest, LeavingTheHeadMovesTheNextUp) {
  Throttle t(Limit(QosLimitKind::kIopsTotal, 10, 1), 0);
  FakeWaiter a, b, c;
  ASSERT_EQ(t.Enter(a, kRead4k, 0), Throttle::kAdmitted);
  ASSERT_EQ(t.Enter(b, kRead4k, 0), 100 * kMs);
  ASSERT_EQ(t.Enter(c, kRead4k, 0), Throttle::kNever);
  t.Leave(b, 0);
  EXPECT_EQ(c.wakes, 1);
  EXPECT_EQ(t.Poll(c, 0), 100 * kMs);  // c heads the queue now
  EXPECT_EQ(t.stats().waiting, 1u);
  t.Leave(c, 0);
  t.Leave(c, 0);  // twice: a no-op
  EXPECT_EQ(t.stats().waiting, 0u);
}

TEST(ThrottleTest, HugeRequestsAtTinyRatesDoNotOverflow) {
  Throttle t(Limit(QosLimitKind::kBpsTotal, 1, 1), 0);
  // 4 GiB at a byte per second: far beyond the clock's range, clamped.
  FakeWaiter w;
  ASSERT_EQ(t.Enter(w, {true, uint64_t{1} << 32}, 0), Throttle::kAdmitted);
  FakeWaiter x;
  const int64_t due = t.Enter(x, {true, 1}, 0);
  EXPECT_GT(due, 0);
  EXPECT_LT(due, Throttle::kNever);
  t.Leave(x, 0);
}

TEST(ThrottleTest, ConcurrentClientsStayWithinTheLimit) {
  // Real time, 4 threads in a closed loop polling: the counts must hold.
  const uint64_t rate = 20000, burst = 200;
  auto now = [] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  };
  const int64_t start = now();
  Throttle t(Limit(QosLimitKind::kIopsTotal, rate, burst), start);
  std::atomic<uint64_t> admitted{0};
  const int64_t until = start + 300 * kMs;
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      FakeWaiter w;
      while (now() < until) {
        int64_t r = t.Enter(w, kRead4k, now());
        while (r != Throttle::kAdmitted) {
          std::this_thread::yield();
          r = t.Poll(w, now());
        }
        admitted.fetch_add(1);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  const double elapsed = static_cast<double>(now() - start) / kSec;
  EXPECT_LE(static_cast<double>(admitted.load()), rate * elapsed + burst + 4);
  EXPECT_EQ(t.stats().waiting, 0u);
}

TEST(QosGateTest, EngagedFollowsLimitsAndGroup) {
  QosGate g;
  EXPECT_FALSE(g.engaged());
  g.SetLimits(Limit(QosLimitKind::kIopsWrite, 5));
  EXPECT_TRUE(g.engaged());
  g.SetLimits({});
  EXPECT_FALSE(g.engaged());
  auto group = std::make_shared<QosGroup>("g", QosLimits{});
  g.SetGroup(group);
  EXPECT_TRUE(g.engaged());
  EXPECT_EQ(group->members(), 1);
  {
    QosGate other;
    other.SetGroup(group);
    EXPECT_EQ(group->members(), 2);
  }
  EXPECT_EQ(group->members(), 1);  // a gate that goes leaves its group
  g.SetGroup(nullptr);
  EXPECT_FALSE(g.engaged());
  EXPECT_EQ(group->members(), 0);
}

TEST(QosLimitsTest, ValidationAndUpdates) {
  QosLimits l;
  EXPECT_TRUE(ValidateQosLimits(l).ok());
  l[QosLimitKind::kBpsRead] = {0, 5};
  absl::Status st = ValidateQosLimits(l);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("bandwidth-read burst"), std::string::npos);
  l[QosLimitKind::kBpsRead] = {kMaxQosRate + 1, 0};
  EXPECT_FALSE(ValidateQosLimits(l).ok());

  QosLimits cur;
  cur[QosLimitKind::kIopsTotal] = {100, 20};
  cur[QosLimitKind::kBpsTotal] = {1 << 20, 0};
  QosLimitsUpdate u;
  EXPECT_TRUE(u.empty());
  u.set_rate(QosLimitKind::kIopsTotal, 5000);
  QosLimits next = u.AppliedTo(cur);
  EXPECT_EQ(next[QosLimitKind::kIopsTotal], (RateLimit{5000, 20}));
  EXPECT_EQ(next[QosLimitKind::kBpsTotal], cur[QosLimitKind::kBpsTotal]);
  QosLimitsUpdate off;
  off.set_rate(QosLimitKind::kIopsTotal, 0);
  EXPECT_EQ(off.AppliedTo(cur)[QosLimitKind::kIopsTotal], RateLimit{});
}

}  // namespace
}  // namespace nbdmgr
