#include "lib/state/state_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace nbdmgr {
namespace {

class StateStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/nbdmgr-state-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(StateStoreTest, MissingFileIsEmpty) {
  auto s = StateStore::Open(dir_ + "/sub");
  ASSERT_TRUE(s.ok());
  auto loaded = (*s)->Load();
  ASSERT_TRUE(loaded.ok());
  EXPECT_TRUE(loaded->empty());
  struct stat st;
  ASSERT_EQ(::stat((dir_ + "/sub").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700);
}

TEST_F(StateStoreTest, RoundTripsEveryField) {
  auto s = *StateStore::Open(dir_);
  ExportConfig a;
  a.name = "vm-1";
  a.description = "disk, with \"quotes\"";
  a.backend = BackendKind::kFile;
  a.path = "/srv/vm1.img";
  a.size = 10ull << 30;
  a.create = true;
  a.read_only = true;
  a.buffers.strategy = BufferStrategy::kStream;
  a.buffers.memory_cap_bytes = 256 << 20;
  a.buffers.pool_idle_release = std::chrono::milliseconds(1500);
  ExportConfig b;
  b.name = "scratch";
  b.backend = BackendKind::kMemory;
  b.size = 1 << 30;
  ASSERT_TRUE(s->Save({a, b}).ok());
  auto loaded = s->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 2u);  // in name order
  EXPECT_EQ((*loaded)[0].name, "scratch");
  const ExportConfig& x = (*loaded)[1];
  EXPECT_EQ(x.name, a.name);
  EXPECT_EQ(x.description, a.description);
  EXPECT_EQ(x.backend, BackendKind::kFile);
  EXPECT_EQ(x.path, a.path);
  EXPECT_EQ(x.size, a.size);
  EXPECT_TRUE(x.create);
  EXPECT_TRUE(x.read_only);
  EXPECT_EQ(x.buffers.strategy, BufferStrategy::kStream);
  EXPECT_EQ(x.buffers.memory_cap_bytes, 256u << 20);
  EXPECT_EQ(x.buffers.pool_idle_release, std::chrono::milliseconds(1500));
  EXPECT_FALSE(std::filesystem::exists(s->path() + ".tmp"));
}

TEST_F(StateStoreTest, CorruptFileIsRefusedAndLeftUntouched) {
  auto s = *StateStore::Open(dir_);
  const std::string junk =
      "exports { name: \"exports/x\" memory { size_bytes: ";
  { std::ofstream(s->path()) << junk; }
  auto loaded = s->Load();
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(loaded.status().message().find(s->path()), absl::string_view::npos);
  std::ifstream in(s->path());
  std::string after((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(after, junk);
}

TEST_F(StateStoreTest, InvalidExportInFileIsRefused) {
  auto s = *StateStore::Open(dir_);
  {
    std::ofstream(s->path())
        << "exports { name: \"exports/bad name\" memory { size_bytes: 1 } }";
  }
  EXPECT_EQ(s->Load().status().code(), absl::StatusCode::kDataLoss);
}

ExportConfig Memory(const std::string& name, std::string description = "") {
  ExportConfig c;
  c.name = name;
  c.backend = BackendKind::kMemory;
  c.size = 1 << 20;
  c.description = std::move(description);
  return c;
}

std::vector<std::string> Names(StateStore& s) {
  auto loaded = s.Load();
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  std::vector<std::string> out;
  if (loaded.ok()) {
    for (const ExportConfig& c : *loaded) out.push_back(c.name);
  }
  return out;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

using Strings = std::vector<std::string>;

// Changes after the first go to the log, not the snapshot, and a new store
// (a restarted daemon) sees them.
TEST_F(StateStoreTest, ChangesAreLoggedAndReplayed) {
  auto s = *StateStore::Open(dir_);
  ASSERT_TRUE(s->Load().ok());
  ASSERT_TRUE(s->Put(Memory("a")).ok());  // no log yet: a snapshot
  ASSERT_TRUE(s->Put(Memory("b", "first")).ok());
  ASSERT_TRUE(s->Put(Memory("b", "second")).ok());
  ASSERT_TRUE(s->Delete("a").ok());
  EXPECT_EQ(Slurp(s->path()).find("exports/b"), std::string::npos);
  EXPECT_EQ(std::filesystem::file_size(s->log_path()), StateStore::kLogBytes);
  auto again = *StateStore::Open(dir_);
  auto loaded = again->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 1u);
  EXPECT_EQ((*loaded)[0].name, "b");
  EXPECT_EQ((*loaded)[0].description, "second");
  // And it appends where the first left off.
  ASSERT_TRUE(again->Put(Memory("c")).ok());
  EXPECT_EQ(Names(*StateStore::Open(dir_).value()), (Strings{"b", "c"}));
}

// A record cut short by a crash (here: its last byte changed) fails its
// checksum; the log ends before it, and the next change overwrites it.
TEST_F(StateStoreTest, TornLastRecordIsDropped) {
  auto s = *StateStore::Open(dir_);
  ASSERT_TRUE(s->Put(Memory("a")).ok());
  ASSERT_TRUE(s->Put(Memory("b")).ok());
  ASSERT_TRUE(s->Put(Memory("c")).ok());
  std::string log = Slurp(s->log_path());
  size_t end = log.find_last_not_of('\0');
  ASSERT_NE(end, std::string::npos);
  log[end] = static_cast<char>(log[end] ^ 0x5a);
  { std::ofstream(s->log_path(), std::ios::binary) << log; }
  auto again = *StateStore::Open(dir_);
  EXPECT_EQ(Names(*again), (Strings{"a", "b"}));
  ASSERT_TRUE(again->Put(Memory("d")).ok());
  EXPECT_EQ(Names(*StateStore::Open(dir_).value()), (Strings{"a", "b", "d"}));
}

// A crash after a compaction wrote its snapshot but before the new log
// replaced the old one: the old log's generation no longer matches, and its
// records (already in the snapshot, or superseded) are not replayed.
TEST_F(StateStoreTest, LogOfAnOlderGenerationIsIgnored) {
  auto s = *StateStore::Open(dir_);
  ASSERT_TRUE(s->Put(Memory("a")).ok());
  ASSERT_TRUE(s->Put(Memory("b")).ok());  // in the log
  std::string old_log = Slurp(s->log_path());
  ASSERT_TRUE(s->Save({Memory("c")}).ok());
  { std::ofstream(s->log_path(), std::ios::binary) << old_log; }
  EXPECT_EQ(Names(*StateStore::Open(dir_).value()), (Strings{"c"}));
}

// When the log is full, the set is compacted into a new snapshot and the log
// starts over; nothing is lost on the way.
TEST_F(StateStoreTest, FullLogIsCompacted) {
  auto s = *StateStore::Open(dir_);
  const std::string text(4000, 'x');
  Strings want;
  for (int i = 0; i < 600; ++i) {  // ~2.4 MB of records: two compactions
    // StrCat: GCC 12 at -O3 misreports "literal" + std::string (-Wrestrict).
    std::string name = absl::StrCat("e", 1000 + i);
    ASSERT_TRUE(s->Put(Memory(name, text)).ok()) << i;
    if (i % 3 == 0) {
      ASSERT_TRUE(s->Delete(name).ok());
    } else {
      want.push_back(name);
    }
  }
  EXPECT_NE(Slurp(s->path()).find("exports/e1500"), std::string::npos);
  EXPECT_EQ(Names(*StateStore::Open(dir_).value()), want);
}

TEST_F(StateStoreTest, CorruptLogIsRefusedAndLeftUntouched) {
  auto s = *StateStore::Open(dir_);
  ASSERT_TRUE(s->Put(Memory("a")).ok());
  { std::ofstream(s->log_path(), std::ios::binary) << "not a log"; }
  auto again = *StateStore::Open(dir_);
  auto loaded = again->Load();
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(loaded.status().message().find(again->log_path()),
            absl::string_view::npos);
  EXPECT_EQ(Slurp(again->log_path()), "not a log");
}

}  // namespace
}  // namespace nbdmgr
