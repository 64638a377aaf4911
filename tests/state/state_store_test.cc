#include "lib/state/state_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

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
  ASSERT_EQ(loaded->size(), 2u);
  const ExportConfig& x = (*loaded)[0];
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
  EXPECT_EQ((*loaded)[1].name, "scratch");
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

}  // namespace
}  // namespace nbdmgr
