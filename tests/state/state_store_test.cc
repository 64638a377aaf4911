#include "lib/state/state_store.h"

#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace nbdmgr {
namespace {

using Strings = std::vector<std::string>;

ExportConfig Memory(const std::string& name, std::string description = "") {
  ExportConfig c;
  c.name = name;
  c.backend = BackendKind::kMemory;
  c.size = 1 << 20;
  c.description = std::move(description);
  return c;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

void Spit(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

// The permission bits of `path`, -1 if it cannot be stat'ed.
int ModeOf(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int>(st.st_mode & 07777);
}

bool Contains(absl::string_view haystack, absl::string_view needle) {
  return haystack.find(needle) != absl::string_view::npos;
}

// Byte offsets of the records of a log, then where the next one would go.
std::vector<size_t> RecordOffsets(const std::string& log) {
  std::vector<size_t> out;
  size_t pos = 16;
  while (pos + 8 <= log.size()) {
    uint32_t len = 0;
    for (int i = 0; i < 4; ++i) {
      len |= static_cast<uint32_t>(static_cast<unsigned char>(log[pos + i]))
             << (8 * i);
    }
    if (len == 0) break;
    out.push_back(pos);
    pos += 8 + len;
  }
  out.push_back(pos);
  return out;
}

class StateStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/nbdmgr-state-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override {
    if (!mount_.empty()) ::umount2(mount_.c_str(), MNT_DETACH);
    std::filesystem::remove_all(dir_);
  }

  // A store on `dir` (dir_ by default) that loaded what was saved.
  std::unique_ptr<StateStore> OpenLoaded(std::string dir = "") {
    auto s = StateStore::Open(dir.empty() ? dir_ : dir);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return nullptr;
    auto loaded = (*s)->Load();
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return std::move(*s);
  }

  // What a restarted daemon would see: a new store's Load. No other store
  // may be open on dir_.
  Strings SavedNames() {
    auto s = StateStore::Open(dir_);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return {};
    auto loaded = (*s)->Load();
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    Strings out;
    if (loaded.ok()) {
      for (const ExportConfig& c : *loaded) out.push_back(c.name);
    }
    return out;
  }

  // The status of a new store's Load of dir_.
  absl::Status LoadStatus() {
    auto s = StateStore::Open(dir_);
    if (!s.ok()) return s.status();
    return (*s)->Load().status();
  }

  // Mounts a tmpfs of `bytes` on dir_/fs (mode 0700); false if this process
  // may not mount.
  bool MountTmpfs(const std::string& bytes) {
    std::string fs = dir_ + "/fs";
    std::filesystem::create_directories(fs);
    if (::mount("tmpfs", fs.c_str(), "tmpfs", 0,
                absl::StrCat("size=", bytes, ",mode=0700").c_str()) != 0) {
      return false;
    }
    mount_ = fs;
    return true;
  }

  std::string dir_;
  std::string mount_;
};

// --- The directory ---

TEST_F(StateStoreTest, MissingDirectoryIsCreatedPrivate) {
  auto s = StateStore::Open(dir_ + "/sub/state");
  ASSERT_TRUE(s.ok()) << s.status();
  auto loaded = (*s)->Load();
  ASSERT_TRUE(loaded.ok());
  EXPECT_TRUE(loaded->empty());
  EXPECT_EQ(ModeOf(dir_ + "/sub/state"), 0700);
  const mode_t mask = ::umask(0);
  ::umask(mask);
  EXPECT_EQ(ModeOf(dir_ + "/sub"), static_cast<int>(0755 & ~mask));
}

TEST_F(StateStoreTest, ExistingDirectoryKeepsItsMode) {
  std::string dir = dir_ + "/shared";
  std::filesystem::create_directories(dir);
  ASSERT_EQ(::chmod(dir.c_str(), 0755), 0);
  auto s = OpenLoaded(dir);
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(s->Put(Memory("a")).ok());
  EXPECT_EQ(ModeOf(dir), 0755);
}

TEST_F(StateStoreTest, GroupWritableDirectoryIsRefused) {
  std::string dir = dir_ + "/shared";
  std::filesystem::create_directories(dir);
  ASSERT_EQ(::chmod(dir.c_str(), 0770), 0);
  auto s = StateStore::Open(dir);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(s.status().message(), dir)) << s.status();
  EXPECT_TRUE(Contains(s.status().message(), "chmod go-w")) << s.status();
  EXPECT_EQ(ModeOf(dir), 0770);
  EXPECT_FALSE(std::filesystem::exists(dir + "/lock"));
}

// /tmp-like: sticky and world-writable. Refused, and its mode kept.
TEST_F(StateStoreTest, WorldWritableStickyDirectoryIsRefusedAndKept) {
  std::string dir = dir_ + "/tmp";
  std::filesystem::create_directories(dir);
  ASSERT_EQ(::chmod(dir.c_str(), 01777), 0);
  std::string link = dir_ + "/link";
  std::filesystem::create_directory_symlink(dir, link);
  auto s = StateStore::Open(link);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(s.status().message(), "mode 1777")) << s.status();
  EXPECT_EQ(ModeOf(dir), 01777);
}

TEST_F(StateStoreTest, DirectoryOfAnotherUserIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to chown";
  std::string dir = dir_ + "/other";
  std::filesystem::create_directories(dir);
  ASSERT_EQ(::chown(dir.c_str(), 12345, 12345), 0);
  auto s = StateStore::Open(dir);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(s.status().message(), "owned by uid 12345"))
      << s.status();
}

TEST_F(StateStoreTest, SymlinkToADirectoryIsUsed) {
  std::string real = dir_ + "/real";
  std::filesystem::create_directories(real);
  ASSERT_EQ(::chmod(real.c_str(), 0700), 0);
  std::filesystem::create_directory_symlink(real, dir_ + "/link");
  {
    auto s = OpenLoaded(dir_ + "/link");
    ASSERT_NE(s, nullptr);
    ASSERT_TRUE(s->Put(Memory("a")).ok());
  }
  EXPECT_TRUE(std::filesystem::is_regular_file(real + "/exports.textproto"));
  EXPECT_TRUE(std::filesystem::is_symlink(dir_ + "/link"));
}

TEST_F(StateStoreTest, FileInsteadOfDirectoryIsRefused) {
  Spit(dir_ + "/file", "x");
  auto s = StateStore::Open(dir_ + "/file");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(s.status().message(), "not a directory"));
}

// --- The lock ---

TEST_F(StateStoreTest, SecondOpenIsRefusedWhileTheFirstLives) {
  auto first = StateStore::Open(dir_);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = StateStore::Open(dir_);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(
      second.status().message(),
      absl::StrCat("state directory ", dir_,
                   " is in use by another nbdmgrd (pid ", ::getpid(), ")"));
  EXPECT_EQ(ModeOf(dir_ + "/lock"), 0600);
  first->reset();
  EXPECT_TRUE(StateStore::Open(dir_).ok());
}

TEST_F(StateStoreTest, LockThatIsASymlinkIsRefused) {
  Spit(dir_ + "/outside", "keep");
  std::filesystem::create_symlink(dir_ + "/outside", dir_ + "/lock");
  EXPECT_EQ(StateStore::Open(dir_).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Slurp(dir_ + "/outside"), "keep");
}

// --- Refusing to write what was not loaded ---

TEST_F(StateStoreTest, ChangesNeedASuccessfulLoad) {
  auto s = *StateStore::Open(dir_);
  EXPECT_EQ(s->Put(Memory("a")).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s->Delete("a").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s->Save({}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(std::filesystem::exists(s->path()));
}

// --- The snapshot ---

TEST_F(StateStoreTest, RoundTripsEveryField) {
  auto s = OpenLoaded();
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

// An overlay created over the API comes back with its base and cluster
// size, from the log and from a snapshot.
TEST_F(StateStoreTest, RoundTripsAnOverlay) {
  ExportConfig ov;
  ov.name = "ov";
  ov.backend = BackendKind::kFile;
  ov.path = "/srv/ov.img";
  ov.create = true;  // no size: an overlay takes its base's
  ov.base = "golden";
  ov.cluster_size = 256 * 1024;
  ExportConfig on_file = ov;
  on_file.name = "ov2";
  on_file.base = "/srv/golden.img";
  on_file.cluster_size = 0;
  auto expect_loaded = [&] {
    auto s = StateStore::Open(dir_);
    ASSERT_TRUE(s.ok()) << s.status();
    auto loaded = (*s)->Load();
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    ASSERT_EQ(loaded->size(), 2u);
    for (const ExportConfig& want : {ov, on_file}) {
      const ExportConfig& got = want.name == "ov" ? (*loaded)[0] : (*loaded)[1];
      EXPECT_EQ(got.name, want.name);
      EXPECT_EQ(got.path, want.path);
      EXPECT_EQ(got.base, want.base);
      EXPECT_EQ(got.cluster_size, want.cluster_size);
      EXPECT_TRUE(got.create);
      EXPECT_FALSE(got.size.has_value());
    }
  };
  {
    auto s = OpenLoaded();
    ASSERT_TRUE(s->Put(Memory("a")).ok());  // a snapshot; what follows: log
    ASSERT_TRUE(s->Put(ov).ok());
    ASSERT_TRUE(s->Put(on_file).ok());
    ASSERT_TRUE(s->Delete("a").ok());
  }
  expect_loaded();
  {
    auto s = OpenLoaded();
    ASSERT_TRUE(s->Save({ov, on_file}).ok());
    EXPECT_TRUE(Contains(Slurp(s->path()), "base: \"golden\""));
    EXPECT_TRUE(Contains(Slurp(s->path()), "cluster_size_bytes: 262144"));
  }
  expect_loaded();
}

TEST_F(StateStoreTest, CorruptFileIsRefusedAndLeftUntouched) {
  auto s = *StateStore::Open(dir_);
  const std::string junk =
      "exports { name: \"exports/x\" memory { size_bytes: ";
  Spit(s->path(), junk);
  auto loaded = s->Load();
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(loaded.status().message(), s->path()));
  EXPECT_EQ(s->Put(Memory("a")).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Slurp(s->path()), junk);
}

TEST_F(StateStoreTest, InvalidExportInFileIsRefused) {
  auto s = *StateStore::Open(dir_);
  Spit(s->path(),
       "exports { name: \"exports/bad name\" memory { size_bytes: 1 } }");
  EXPECT_EQ(s->Load().status().code(), absl::StatusCode::kDataLoss);
}

// Saved state: "a" in the snapshot, "b" and "c" in the log.
class SavedStateTest : public StateStoreTest {
 protected:
  void SetUp() override {
    StateStoreTest::SetUp();
    auto s = OpenLoaded();
    ASSERT_TRUE(s->Put(Memory("a")).ok());  // no log yet: a snapshot
    ASSERT_TRUE(s->Put(Memory("b")).ok());
    ASSERT_TRUE(s->Put(Memory("c")).ok());
    path_ = s->path();
    log_path_ = s->log_path();
    snapshot_ = Slurp(path_);
    log_ = Slurp(log_path_);
    ASSERT_EQ(RecordOffsets(log_).size(), 3u);
  }

  // The store refuses to load, with DataLoss naming `file` (and saying
  // "untouched"), and refuses changes; the files are as they were.
  void ExpectRefused(const std::string& file) {
    auto s = StateStore::Open(dir_);
    ASSERT_TRUE(s.ok()) << s.status();
    absl::Status st = (*s)->Load().status();
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    EXPECT_TRUE(Contains(st.message(), file)) << st;
    EXPECT_TRUE(Contains(st.message(), "untouched")) << st;
    EXPECT_EQ((*s)->Put(Memory("z")).code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ((*s)->Delete("a").code(), absl::StatusCode::kFailedPrecondition);
  }

  std::string path_, log_path_, snapshot_, log_;
};

TEST_F(SavedStateTest, SnapshotThatIsADirectoryIsRefused) {
  std::filesystem::remove(path_);
  std::filesystem::create_directory(path_);
  ExpectRefused(path_);
  EXPECT_TRUE(std::filesystem::is_directory(path_));
  EXPECT_EQ(Slurp(log_path_), log_);
}

TEST_F(SavedStateTest, EmptySnapshotIsRefused) {
  Spit(path_, "");
  ExpectRefused(path_);
  EXPECT_EQ(Slurp(path_), "");
  EXPECT_EQ(Slurp(log_path_), log_);
}

TEST_F(SavedStateTest, SnapshotThatIsASymlinkIsRefused) {
  Spit(dir_ + "/elsewhere", snapshot_);
  std::filesystem::remove(path_);
  std::filesystem::create_symlink(dir_ + "/elsewhere", path_);
  ExpectRefused(path_);
  EXPECT_TRUE(std::filesystem::is_symlink(path_));
}

TEST_F(SavedStateTest, SnapshotThatIsAFifoIsRefusedWithoutBlocking) {
  std::filesystem::remove(path_);
  ASSERT_EQ(::mkfifo(path_.c_str(), 0600), 0);
  ExpectRefused(path_);
}

TEST_F(SavedStateTest, GarbageSnapshotIsRefused) {
  Spit(path_, "\x01\x02 not text { at all");
  ExpectRefused(path_);
  EXPECT_EQ(Slurp(log_path_), log_);
}

TEST_F(SavedStateTest, MissingSnapshotWithALogIsRefused) {
  std::filesystem::remove(path_);
  ExpectRefused(path_);
  EXPECT_FALSE(std::filesystem::exists(path_));
  EXPECT_EQ(Slurp(log_path_), log_);
}

TEST_F(SavedStateTest, SnapshotOlderThanItsLogIsRefused) {
  {
    auto s = OpenLoaded();
    ASSERT_TRUE(s->Save({Memory("x")}).ok());  // generation 2
  }
  std::string log2 = Slurp(log_path_);
  Spit(path_, snapshot_);  // generation 1
  ExpectRefused(path_);
  EXPECT_EQ(Slurp(log_path_), log2);
  EXPECT_EQ(Slurp(path_), snapshot_);
}

TEST_F(SavedStateTest, LogThatIsADirectoryIsRefused) {
  std::filesystem::remove(log_path_);
  std::filesystem::create_directory(log_path_);
  ExpectRefused(log_path_);
  EXPECT_EQ(Slurp(path_), snapshot_);
}

// --- The log ---

// Changes after the first go to the log, not the snapshot, and a new store
// (a restarted daemon) sees them.
TEST_F(StateStoreTest, ChangesAreLoggedAndReplayed) {
  auto s = OpenLoaded();
  ASSERT_TRUE(s->Put(Memory("a")).ok());  // no log yet: a snapshot
  ASSERT_TRUE(s->Put(Memory("b", "first")).ok());
  ASSERT_TRUE(s->Put(Memory("b", "second")).ok());
  ASSERT_TRUE(s->Delete("a").ok());
  EXPECT_EQ(Slurp(s->path()).find("exports/b"), std::string::npos);
  EXPECT_EQ(std::filesystem::file_size(s->log_path()), StateStore::kLogBytes);
  s.reset();
  auto again = *StateStore::Open(dir_);
  auto loaded = again->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 1u);
  EXPECT_EQ((*loaded)[0].name, "b");
  EXPECT_EQ((*loaded)[0].description, "second");
  // And it appends where the first left off.
  ASSERT_TRUE(again->Put(Memory("c")).ok());
  again.reset();
  EXPECT_EQ(SavedNames(), (Strings{"b", "c"}));
}

// A record cut short by a crash (here: its last byte changed) fails its
// checksum; the log ends before it, and the next change overwrites it.
TEST_F(SavedStateTest, TornLastRecordIsDropped) {
  size_t end = log_.find_last_not_of('\0');
  log_[end] = static_cast<char>(log_[end] ^ 0x5a);
  Spit(log_path_, log_);
  auto again = OpenLoaded();
  EXPECT_EQ(again->Load()->size(), 2u);  // a, b
  ASSERT_TRUE(again->Put(Memory("d")).ok());
  again.reset();
  EXPECT_EQ(SavedNames(), (Strings{"a", "b", "d"}));
}

// A torn write that kept the record's start and lost its end (zeroes):
// dropped, and a shorter record written over it leaves none of it behind.
TEST_F(StateStoreTest, TornLongRecordIsDroppedAndOverwrittenCleanly) {
  {
    auto s = OpenLoaded();
    ASSERT_TRUE(s->Put(Memory("a")).ok());
    ASSERT_TRUE(s->Put(Memory("b")).ok());
    ASSERT_TRUE(s->Put(Memory("c", std::string(3000, 'x'))).ok());
  }
  std::string log = Slurp(dir_ + "/exports.log");
  std::vector<size_t> at = RecordOffsets(log);
  ASSERT_EQ(at.size(), 3u);
  std::fill(log.begin() + static_cast<ptrdiff_t>(at[1] + 2000),
            log.begin() + static_cast<ptrdiff_t>(at[2]), '\0');
  Spit(dir_ + "/exports.log", log);
  {
    auto s = OpenLoaded();
    ASSERT_TRUE(s->Put(Memory("d")).ok());
  }
  EXPECT_EQ(SavedNames(), (Strings{"a", "b", "d"}));
  std::string after = Slurp(dir_ + "/exports.log");
  at = RecordOffsets(after);
  ASSERT_EQ(at.size(), 3u);
  EXPECT_EQ(after.find_first_not_of('\0', at[2]), std::string::npos);
}

// One flipped bit in a record that is not the last: the log is corrupt, not
// torn. Load names the file and the record's offset, and writes nothing.
TEST_F(SavedStateTest, FlippedBitInAMiddleRecordIsDataLoss) {
  size_t b = RecordOffsets(log_)[0];
  std::string bad = log_;
  bad[b + 12] = static_cast<char>(bad[b + 12] ^ 0x04);  // in b's payload
  Spit(log_path_, bad);
  ExpectRefused(log_path_);
  absl::Status st = LoadStatus();
  EXPECT_TRUE(Contains(st.message(), absl::StrCat("byte ", b))) << st;
  EXPECT_EQ(Slurp(log_path_), bad);
  EXPECT_EQ(Slurp(path_), snapshot_);
}

TEST_F(SavedStateTest, FlippedBitInAMiddleRecordsLengthIsDataLoss) {
  size_t b = RecordOffsets(log_)[0];
  // Shorter or a bit longer; long enough to cover the record after it (and
  // end in zeroes); impossibly long.
  for (int bit : {0, 3, 8, 12, 20}) {
    std::string bad = log_;
    bad[b + bit / 8] = static_cast<char>(bad[b + bit / 8] ^ (1 << (bit % 8)));
    Spit(log_path_, bad);
    absl::Status st = LoadStatus();
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << bit;
    EXPECT_TRUE(Contains(st.message(), absl::StrCat("byte ", b))) << st;
    EXPECT_EQ(Slurp(log_path_), bad);
  }
}

// Garbage after the end of the log (a zero record header): corruption.
TEST_F(SavedStateTest, DataAfterTheLastRecordIsDataLoss) {
  size_t end = RecordOffsets(log_).back();
  std::string bad = log_;
  bad[end + 100] = 1;
  Spit(log_path_, bad);
  ExpectRefused(log_path_);
  EXPECT_TRUE(Contains(LoadStatus().message(), absl::StrCat("byte ", end)));
}

// A record whose checksum matches was written whole: if it does not parse,
// it is corrupt even at the end of the log.
TEST_F(SavedStateTest, UnparsableLastRecordIsDataLoss) {
  size_t end = RecordOffsets(log_).back();
  // Payload 0xff 0xff (a truncated varint), CRC-32C of it: 0x...
  // computed here by a tiny copy of the algorithm.
  auto crc32c = [](const std::string& d) {
    uint32_t c = 0xffffffff;
    for (unsigned char ch : d) {
      c ^= ch;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82f63b78 ^ (c >> 1) : c >> 1;
    }
    return c ^ 0xffffffff;
  };
  std::string payload = "\xff\xff";
  uint32_t crc = crc32c(payload);
  std::string bad = log_;
  bad[end] = 2;
  for (int i = 0; i < 4; ++i)
    bad[end + 4 + i] = static_cast<char>(crc >> (8 * i));
  bad.replace(end + 8, 2, payload);
  Spit(log_path_, bad);
  ExpectRefused(log_path_);
}

// A crash after a compaction wrote its snapshot but before the new log
// replaced the old one: the old log's generation no longer matches, and its
// records (already in the snapshot, or superseded) are not replayed.
TEST_F(SavedStateTest, LogOfAnOlderGenerationIsIgnored) {
  {
    auto s = OpenLoaded();
    ASSERT_TRUE(s->Save({Memory("x")}).ok());
  }
  Spit(log_path_, log_);
  EXPECT_EQ(SavedNames(), (Strings{"x"}));
}

// When the log is full, the set is compacted into a new snapshot and the log
// starts over; nothing is lost on the way.
TEST_F(StateStoreTest, FullLogIsCompacted) {
  auto s = OpenLoaded();
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
  s.reset();
  EXPECT_EQ(SavedNames(), want);
}

TEST_F(SavedStateTest, CorruptLogIsRefusedAndLeftUntouched) {
  Spit(log_path_, "not a log");
  ExpectRefused(log_path_);
  EXPECT_EQ(Slurp(log_path_), "not a log");
}

// --- Temporary files ---

TEST_F(StateStoreTest, PlantedSymlinkAtTheTempPathIsNotFollowed) {
  const std::string victim = dir_ + "/victim";
  Spit(victim, "precious");
  auto s = OpenLoaded();
  std::filesystem::create_symlink(victim, s->path() + ".tmp");
  std::filesystem::create_symlink(victim, s->log_path() + ".tmp");
  ASSERT_TRUE(s->Put(Memory("a")).ok());  // a snapshot and a new log
  EXPECT_EQ(Slurp(victim), "precious");
  EXPECT_FALSE(std::filesystem::exists(s->path() + ".tmp"));
  EXPECT_FALSE(std::filesystem::is_symlink(s->path() + ".tmp"));
  EXPECT_FALSE(std::filesystem::is_symlink(s->log_path() + ".tmp"));
  EXPECT_FALSE(std::filesystem::is_symlink(s->path()));
  s.reset();
  EXPECT_EQ(SavedNames(), (Strings{"a"}));
}

TEST_F(StateStoreTest, WriteFileAtomicallyDoesNotFollowATempSymlink) {
  const std::string victim = dir_ + "/victim";
  Spit(victim, "precious");
  std::filesystem::create_symlink(victim, dir_ + "/f.tmp");
  ASSERT_TRUE(WriteFileAtomically(dir_ + "/f", "new").ok());
  EXPECT_EQ(Slurp(victim), "precious");
  EXPECT_EQ(Slurp(dir_ + "/f"), "new");
}

// --- Write failures ---

// Limits the size of files this process writes for its lifetime (writes past
// it fail with EFBIG instead of raising SIGXFSZ).
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    old_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    ::getrlimit(RLIMIT_FSIZE, &old_);
    struct rlimit lim = old_;
    lim.rlim_cur = bytes;
    ok_ = ::setrlimit(RLIMIT_FSIZE, &lim) == 0;
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old_);
    std::signal(SIGXFSZ, old_handler_);
  }
  bool ok() const { return ok_; }

 private:
  struct rlimit old_;
  void (*old_handler_)(int);
  bool ok_;
};

// The record cannot be written, nor erased, nor a snapshot written: the
// change fails, later ones are refused until a compaction succeeds, and none
// of the failed ones is on disk.
TEST_F(SavedStateTest, FailedRecordIsNotSavedAndChangesWaitForACompaction) {
  auto s = OpenLoaded();
  const size_t end = RecordOffsets(log_).back();
  {
    FileSizeLimit limit(end + 4);  // a record's first 4 bytes fit
    if (!limit.ok()) GTEST_SKIP() << "cannot set RLIMIT_FSIZE";
    absl::Status st = s->Put(Memory("d"));
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(Contains(st.message(), "refused")) << st;
    EXPECT_FALSE(s->Put(Memory("e")).ok());
    EXPECT_FALSE(s->Delete("a").ok());
  }
  // Space again: the next change compacts, and is durable.
  ASSERT_TRUE(s->Put(Memory("f")).ok());
  s.reset();
  EXPECT_EQ(SavedNames(), (Strings{"a", "b", "c", "f"}));
}

// The record fails but a snapshot fits (the new log does not): the change
// fails and is not on disk; the snapshot holds the rest, the old log is
// ignored, and later changes go into snapshots until a log can be made.
TEST_F(StateStoreTest, FailedRecordWithoutRoomForANewLog) {
  auto s = OpenLoaded();
  ASSERT_TRUE(s->Put(Memory("a")).ok());
  for (int i = 0; i < 6; ++i) {  // fill the log past a snapshot's size
    ASSERT_TRUE(s->Put(Memory("tmp", std::string(500, 'x'))).ok());
    ASSERT_TRUE(s->Delete("tmp").ok());
  }
  ASSERT_TRUE(s->Put(Memory("b")).ok());
  const size_t end = RecordOffsets(Slurp(s->log_path())).back();
  ASSERT_GT(end, Slurp(s->path()).size() + 200);
  {
    FileSizeLimit limit(end + 4);
    if (!limit.ok()) GTEST_SKIP() << "cannot set RLIMIT_FSIZE";
    EXPECT_FALSE(s->Put(Memory("c")).ok());
    EXPECT_TRUE(s->Put(Memory("d")).ok());  // in a snapshot
    EXPECT_TRUE(s->Delete("a").ok());
  }
  s.reset();
  EXPECT_EQ(SavedNames(), (Strings{"b", "d"}));
}

// On a full filesystem: changes still go into the preallocated log; a
// compaction that cannot write its snapshot fails and leaves the previous
// snapshot and log as they were; one that can write the snapshot but not a
// new log succeeds.
TEST_F(StateStoreTest, FullFilesystem) {
  if (::geteuid() != 0 || !MountTmpfs("1200k")) {
    GTEST_SKIP() << "needs root to mount a small tmpfs";
  }
  const std::string dir = mount_ + "/state";
  auto s = OpenLoaded(dir);
  ASSERT_TRUE(s->Put(Memory("a")).ok());
  ASSERT_TRUE(s->Put(Memory("b")).ok());
  {
    std::ofstream fill(mount_ + "/fill", std::ios::binary);
    std::string block(4096, 'f');
    while (fill.write(block.data(), block.size())) {
    }
  }
  ASSERT_TRUE(s->Put(Memory("c")).ok());  // overwrites log blocks
  absl::Status st = s->Save({Memory("x")});
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_FALSE(std::filesystem::exists(s->path() + ".tmp"));
  EXPECT_FALSE(s->Put(Memory("d")).ok());  // the log was closed: compacts
  s.reset();
  s = OpenLoaded(dir);
  auto names = s->Load();
  ASSERT_TRUE(names.ok());
  ASSERT_EQ(names->size(), 3u);  // a, b, c
  // Room for a snapshot, not for a 1 MiB log.
  std::filesystem::resize_file(
      mount_ + "/fill",
      std::filesystem::file_size(mount_ + "/fill") - (64 << 10));
  ASSERT_TRUE(s->Save({Memory("x")}).ok());
  ASSERT_TRUE(s->Put(Memory("y")).ok());
  s.reset();
  s = OpenLoaded(dir);
  names = s->Load();
  ASSERT_TRUE(names.ok());
  ASSERT_EQ(names->size(), 2u);
  EXPECT_EQ((*names)[0].name, "x");
  EXPECT_EQ((*names)[1].name, "y");
}

// --- Files written by earlier versions ---

// State directories written by nbdmgrd 0.1, before the enum values got
// their type's prefix (`buffer_strategy: FIXED`, `tls: TLS_REQUIRE`); made
// by tests/state/fixtures/make-v0.1-state.sh. "v0.1-state": every export in
// the snapshot plus a short log; "v0.1-state-log": all but the first only
// in the log.
class V01StateTest : public StateStoreTest,
                     public ::testing::WithParamInterface<const char*> {
 protected:
  // Copies the fixture into dir_ (mode 0700, as the store requires).
  void SetUp() override {
    StateStoreTest::SetUp();
    const std::string from =
        absl::StrCat(NBDMGR_TESTS_DIR, "/state/fixtures/", GetParam());
    for (const char* name : {"exports.textproto", "exports.log"}) {
      std::filesystem::copy_file(absl::StrCat(from, "/", name),
                                 absl::StrCat(dir_, "/", name));
    }
  }
};

TEST_P(V01StateTest, EveryExportLoadsWithItsFields) {
  auto s = *StateStore::Open(dir_);
  auto loaded = s->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  std::map<std::string, ExportConfig> got;
  for (const ExportConfig& c : *loaded) got[c.name] = c;
  ASSERT_EQ(got.size(), 5u);
  const BufferSettings default_buffers;
  const BlockSizes default_blocks;

  const ExportConfig& fixed = got["fixed-off"];
  EXPECT_EQ(fixed.backend, BackendKind::kMemory);
  EXPECT_EQ(fixed.size, 1u << 20);
  EXPECT_EQ(fixed.description, "all fields");
  EXPECT_TRUE(fixed.read_only);
  EXPECT_EQ(fixed.block_sizes.minimum, 512u);
  EXPECT_EQ(fixed.block_sizes.preferred, 8192u);
  EXPECT_EQ(fixed.block_sizes.maximum_payload, 1u << 20);
  EXPECT_EQ(fixed.buffers.strategy, BufferStrategy::kFixed);
  EXPECT_EQ(fixed.buffers.memory_cap_bytes, 8u << 20);
  EXPECT_EQ(fixed.buffers.pool_idle_release, std::chrono::milliseconds(2500));
  EXPECT_EQ(fixed.tls, TlsMode::kOff);
  EXPECT_EQ(fixed.max_clients, 3u);
  EXPECT_EQ(fixed.stall_timeout, std::chrono::milliseconds(45000));

  const ExportConfig& grow = got["grow-optional"];
  EXPECT_EQ(grow.backend, BackendKind::kNull);
  EXPECT_EQ(grow.size, 2u << 20);
  EXPECT_FALSE(grow.read_only);
  EXPECT_EQ(grow.buffers.strategy, BufferStrategy::kGrow);
  EXPECT_EQ(grow.buffers.memory_cap_bytes, 0u);
  EXPECT_EQ(grow.tls, TlsMode::kOptional);
  EXPECT_EQ(grow.max_clients, 0u);
  EXPECT_FALSE(grow.stall_timeout.has_value());

  const ExportConfig& exact = got["exact-require"];
  EXPECT_EQ(exact.backend, BackendKind::kMemory);
  EXPECT_EQ(exact.size, 4u << 20);
  EXPECT_EQ(exact.buffers.strategy, BufferStrategy::kExact);
  EXPECT_EQ(exact.buffers.memory_cap_bytes, 16u << 20);  // from the log
  EXPECT_EQ(exact.tls, TlsMode::kRequire);

  const ExportConfig& pool = got["pool-default"];
  EXPECT_EQ(pool.backend, BackendKind::kMemory);
  EXPECT_EQ(pool.size, 1u << 20);
  EXPECT_EQ(pool.description, "");
  EXPECT_EQ(pool.buffers.strategy, BufferStrategy::kPool);
  EXPECT_EQ(pool.buffers.pool_idle_release, default_buffers.pool_idle_release);
  EXPECT_EQ(pool.tls, TlsMode::kOff);
  EXPECT_EQ(pool.block_sizes.minimum, default_blocks.minimum);
  EXPECT_EQ(pool.block_sizes.preferred, default_blocks.preferred);
  EXPECT_EQ(pool.block_sizes.maximum_payload, default_blocks.maximum_payload);

  const ExportConfig& stream = got["stream-file"];
  EXPECT_EQ(stream.backend, BackendKind::kFile);
  EXPECT_EQ(stream.path, "/tmp/nbdmgr-v0.1-fixture/disks/stream.img");
  EXPECT_TRUE(stream.create);
  EXPECT_EQ(stream.size, 1u << 20);
  EXPECT_EQ(stream.buffers.strategy, BufferStrategy::kStream);
  EXPECT_EQ(stream.tls, TlsMode::kOff);
  EXPECT_EQ(stream.stall_timeout, std::chrono::milliseconds(0));
}

// The store goes on from an old directory: a change appends to (or
// compacts) it, and a restart sees the old exports and the change.
TEST_P(V01StateTest, ChangesGoOnFromTheOldFiles) {
  auto s = OpenLoaded();
  ASSERT_TRUE(s->Put(Memory("new")).ok());
  ASSERT_TRUE(s->Delete("pool-default").ok());
  s.reset();
  EXPECT_EQ(SavedNames(), (Strings{"exact-require", "fixed-off",
                                   "grow-optional", "new", "stream-file"}));
}

// Once rewritten, the snapshot names the values with their type's prefix
// (the old names stay readable: deprecated aliases in export.proto).
TEST_P(V01StateTest, NewSnapshotUsesTheNewNames) {
  auto s = *StateStore::Open(dir_);
  auto loaded = s->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_TRUE(s->Save(*loaded).ok());
  const std::string text = Slurp(s->path());
  for (const char* name :
       {"buffer_strategy: BUFFER_STRATEGY_FIXED", "BUFFER_STRATEGY_GROW",
        "BUFFER_STRATEGY_EXACT", "BUFFER_STRATEGY_POOL",
        "BUFFER_STRATEGY_STREAM", "tls: TLS_MODE_OFF", "TLS_MODE_OPTIONAL",
        "TLS_MODE_REQUIRE"}) {
    EXPECT_TRUE(Contains(text, name)) << name;
  }
  EXPECT_FALSE(Contains(text, ": FIXED"));
  EXPECT_FALSE(Contains(text, ": TLS_REQUIRE"));
  s.reset();
  EXPECT_EQ(SavedNames().size(), 5u);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, V01StateTest,
                         ::testing::Values("v0.1-state", "v0.1-state-log"),
                         [](const auto& info) {
                           return info.param == std::string("v0.1-state")
                                      ? "Compacted"
                                      : "InTheLog";
                         });

}  // namespace
}  // namespace nbdmgr
