#include "lib/export/export_registry.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "tests/export/memory_export.h"

namespace nbdmgr {
namespace {

using ::nbdmgr::test::MemoryExport;

TEST(ExportRegistryTest, AddFindRemove) {
  ExportRegistry r;
  ASSERT_TRUE(r.Add(MemoryExport("b")).ok());
  ASSERT_TRUE(r.Add(MemoryExport("a")).ok());
  EXPECT_EQ(r.Add(MemoryExport("a")).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(r.Find("a"), nullptr);
  EXPECT_EQ(r.Find("zzz"), nullptr);
  auto list = r.List();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0]->name(), "a");
  auto removed = r.Remove("a");
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ((*removed)->name(), "a");
  EXPECT_EQ(r.Remove("a").status().code(), absl::StatusCode::kNotFound);
}

TEST(ExportRegistryTest, EmptyNameIsDefault) {
  ExportRegistry r;
  ASSERT_TRUE(r.Add(MemoryExport("a")).ok());
  EXPECT_EQ(r.Find(""), nullptr);
  r.SetDefault("a");
  ASSERT_NE(r.Find(""), nullptr);
  EXPECT_EQ(r.Find("")->name(), "a");
}

TEST(ExportTest, NoClientGetsInOnceDraining) {
  auto e = MemoryExport("d");
  ASSERT_TRUE(e->TryAddClient());
  e->set_draining();
  EXPECT_FALSE(e->TryAddClient());
  EXPECT_EQ(e->clients(), 1);  // the one counted before; none half-added
}

// Clients racing a deleter: each one is either seen by the deleter's count
// (taken after draining is set) or refused. None slips in unseen.
TEST(ExportTest, ClientsRacingADeleteAreSeenOrRefused) {
  for (int round = 0; round < 200; ++round) {
    auto e = MemoryExport("race");
    std::atomic<int> admitted{0};
    std::thread client([&] {
      if (e->TryAddClient()) admitted.fetch_add(1);
    });
    e->set_draining();
    const int seen = e->clients();
    client.join();
    EXPECT_GE(seen, 0);
    EXPECT_LE(admitted.load(), 1);
    if (admitted.load() == 1) {
      // Admitted after the deleter counted zero would be a client nobody
      // stops: the deleter must have seen it.
      EXPECT_EQ(seen, 1) << "round " << round;
      EXPECT_EQ(e->clients(), 1);
    }
  }
}

}  // namespace
}  // namespace nbdmgr
