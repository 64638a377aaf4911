#include "lib/backend/file_backend.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

namespace nbdmgr {
namespace {

class FileBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/nbdmgr-file-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/disk.img";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_, path_;
};

TEST_F(FileBackendTest, MissingFileWithoutSizeIsNotFound) {
  auto b = FileBackend::Open({path_, false, std::nullopt});
  EXPECT_EQ(b.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(FileBackendTest, CreatesSparseFileOfSize) {
  auto b = FileBackend::Open({path_, false, 8 << 20});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*b)->size(), 8u << 20);
  struct stat st;
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 8 << 20);
  EXPECT_EQ(st.st_mode & 0777, 0600);
}

TEST_F(FileBackendTest, SizeMismatchIsRefused) {
  ASSERT_TRUE(FileBackend::Open({path_, false, 1 << 20}).ok());
  auto b = FileBackend::Open({path_, false, 2 << 20});
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(FileBackendTest, NotARegularFile) {
  auto b = FileBackend::Open({dir_, true, std::nullopt});
  EXPECT_FALSE(b.ok());
}

TEST_F(FileBackendTest, WriteReadFuaFlush) {
  auto b = *FileBackend::Open({path_, false, 1 << 20});
  std::vector<uint8_t> data(10000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i);
  ASSERT_TRUE(b->Write(777, data, /*fua=*/true).ok());
  ASSERT_TRUE(b->Flush().ok());
  std::vector<uint8_t> back(data.size());
  ASSERT_TRUE(b->Read(777, back).ok());
  EXPECT_EQ(back, data);
  // Another descriptor sees the bytes on disk.
  int fd = ::open(path_.c_str(), O_RDONLY);
  std::vector<uint8_t> disk(data.size());
  ASSERT_EQ(::pread(fd, disk.data(), disk.size(), 777),
            static_cast<ssize_t>(disk.size()));
  ::close(fd);
  EXPECT_EQ(disk, data);
}

TEST_F(FileBackendTest, ExtentsTrimAndZero) {
  auto b = *FileBackend::Open({path_, false, 4 << 20});
  std::vector<uint8_t> data(1 << 20, 0x5a);
  ASSERT_TRUE(b->Write(1 << 20, data, false).ok());
  std::vector<Extent> ex;
  ASSERT_TRUE(b->Extents(0, 4 << 20, [&](Extent e) {
                 ex.push_back(e);
                 return true;
               }).ok());
  ASSERT_EQ(ex.size(), 3u);
  EXPECT_EQ(ex[0].flags, kExtentHole | kExtentZero);
  EXPECT_EQ(ex[1].length, 1u << 20);
  EXPECT_EQ(ex[1].flags, 0u);
  ASSERT_TRUE(b->Trim(1 << 20, 1 << 20, false).ok());
  std::vector<uint8_t> back(1 << 20);
  ASSERT_TRUE(b->Read(1 << 20, back).ok());
  EXPECT_EQ(back, std::vector<uint8_t>(1 << 20, 0));
  ASSERT_TRUE(b->Write(0, data, false).ok());
  ASSERT_TRUE(b->Zero(0, 1 << 20, ZeroOptions{false, true, true}).ok());
  ASSERT_TRUE(b->Read(0, back).ok());
  EXPECT_EQ(back, std::vector<uint8_t>(1 << 20, 0));
}

TEST_F(FileBackendTest, ReadOnlyOpen) {
  ASSERT_TRUE(FileBackend::Open({path_, false, 1 << 20}).ok());
  auto b = *FileBackend::Open({path_, true, std::nullopt});
  std::vector<uint8_t> d(10, 1);
  EXPECT_FALSE(b->Write(0, d, false).ok());  // EBADF from a read-only fd
}

TEST_F(FileBackendTest, FifoAndDirectoryAreRefusedWithoutBlocking) {
  // Opening a FIFO without O_NONBLOCK would wait for a writer for ever.
  ASSERT_EQ(::mkfifo(path_.c_str(), 0600), 0);
  for (bool ro : {true, false}) {
    auto b = FileBackend::Open({path_, ro, std::nullopt, false});
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(b.status().message().find("not a regular file or block device"),
              absl::string_view::npos)
        << b.status();
  }
  auto d = FileBackend::Open({dir_, true, std::nullopt, false});
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
}

// Known zeroes: what Extents reports after each kind of zeroing.
class FileExtentsTest : public FileBackendTest {
 protected:
  static constexpr uint64_t kMiB = 1 << 20;
  static constexpr uint32_t kHoleZero = kExtentHole | kExtentZero;

  void SetUp() override {
    FileBackendTest::SetUp();
    auto b = FileBackend::Open({path_, false, 8 * kMiB});
    ASSERT_TRUE(b.ok()) << b.status();
    b_ = std::move(*b);
    struct statfs fs;
    ASSERT_EQ(::statfs(dir_.c_str(), &fs), 0);
    // File systems whose ZERO_RANGE leaves unwritten extents that SEEK_DATA
    // skips and FIEMAP lists: there allocated zeroes are told apart.
    unwritten_ = fs.f_type == EXT4_SUPER_MAGIC || fs.f_type == XFS_SUPER_MAGIC;
  }
  std::vector<Extent> Map(uint64_t off, uint64_t len, bool for_read = false) {
    std::vector<Extent> out;
    auto each = [&](Extent e) {
      out.push_back(e);
      return true;
    };
    EXPECT_TRUE((for_read ? b_->ReadExtents(off, len, each)
                          : b_->Extents(off, len, each))
                    .ok());
    uint64_t total = 0;
    for (const Extent& e : out) total += e.length;
    EXPECT_EQ(total, len);
    return out;
  }
  // The flags of the byte at `at`.
  uint32_t FlagsAt(uint64_t at) {
    uint64_t pos = 0;
    for (const Extent& e : Map(0, b_->size())) {
      if (at < pos + e.length) return e.flags;
      pos += e.length;
    }
    ADD_FAILURE() << at << " not mapped";
    return 0xff;
  }
  // Every range reported zero reads as zeroes: the one promise that must
  // never break.
  void ExpectZeroesReadZero() {
    uint64_t pos = 0;
    std::vector<uint8_t> buf;
    for (const Extent& e : Map(0, b_->size())) {
      if (e.flags & kExtentZero) {
        buf.assign(e.length, 1);
        ASSERT_TRUE(b_->Read(pos, buf).ok());
        for (uint64_t i = 0; i < e.length; ++i) {
          ASSERT_EQ(buf[i], 0) << "reported zero at " << pos + i;
        }
      }
      pos += e.length;
    }
  }
  void WriteData(uint64_t off, uint64_t len, uint8_t v) {
    std::vector<uint8_t> d(len, v);
    ASSERT_TRUE(b_->Write(off, d, false).ok());
  }

  std::unique_ptr<FileBackend> b_;
  bool unwritten_ = false;
};

TEST_F(FileExtentsTest, PunchZeroRangeAndData) {
  WriteData(0, 8 * kMiB, 0x5a);
  ASSERT_TRUE(b_->Flush().ok());
  ZeroOptions punch;  // may_trim: a hole
  ASSERT_TRUE(b_->Zero(0, kMiB, punch).ok());
  ZeroOptions no_hole;
  no_hole.may_trim = false;
  ASSERT_TRUE(b_->Zero(2 * kMiB, kMiB, no_hole).ok());
  EXPECT_EQ(FlagsAt(0), kHoleZero);
  EXPECT_EQ(FlagsAt(kMiB), 0u);  // data
  EXPECT_EQ(FlagsAt(2 * kMiB) & kExtentZero, kExtentZero);
  if (unwritten_) {
    EXPECT_EQ(FlagsAt(2 * kMiB), kExtentZero);  // allocated, not a hole
    EXPECT_EQ(FlagsAt(3 * kMiB - 1), kExtentZero);
  }
  EXPECT_EQ(FlagsAt(3 * kMiB), 0u);
  // A trimmed range is a hole too.
  ASSERT_TRUE(b_->Trim(5 * kMiB, kMiB, false).ok());
  EXPECT_EQ(FlagsAt(5 * kMiB), kHoleZero);
  // A READ's plan skips FIEMAP: zero ranges are holes, data is data.
  std::vector<Extent> r = Map(0, 4 * kMiB, /*for_read=*/true);
  ASSERT_EQ(r.size(), 4u);
  EXPECT_EQ(r[0].flags, kHoleZero);
  EXPECT_EQ(r[1].flags, 0u);
  EXPECT_EQ(r[2].flags, kHoleZero);
  EXPECT_EQ(r[3].flags, 0u);
  // Last: reading the zeroes caches their pages, which SEEK_DATA then
  // counts as data (ext4): data from then on, never the other way round.
  ExpectZeroesReadZero();
}

TEST_F(FileExtentsTest, WriteIntoZeroRangeStillInThePageCacheIsData) {
  ZeroOptions no_hole;
  no_hole.may_trim = false;
  ASSERT_TRUE(b_->Zero(0, 4 * kMiB, no_hole).ok());
  ASSERT_TRUE(b_->Flush().ok());
  // Not written back yet: the unwritten extent is still unwritten on disk
  // (FIEMAP says so) while the page cache holds the data.
  WriteData(kMiB + 8192, 4096, 0xee);
  EXPECT_EQ(FlagsAt(kMiB + 8192), 0u);
  EXPECT_EQ(FlagsAt(kMiB + 8192 + 4095), 0u);
  EXPECT_EQ(FlagsAt(0) & kExtentZero, kExtentZero);
  if (unwritten_) {
    EXPECT_EQ(FlagsAt(3 * kMiB), kExtentZero);
  }
  ExpectZeroesReadZero();
  ASSERT_TRUE(b_->Flush().ok());  // written back: still data
  EXPECT_EQ(FlagsAt(kMiB + 8192), 0u);
  ExpectZeroesReadZero();
}

TEST_F(FileExtentsTest, DataWrittenAfterZeroIsNeverReportedZero) {
  ZeroOptions no_hole;
  no_hole.may_trim = false;
  std::mt19937_64 rng(7);
  for (int round = 0; round < 20; ++round) {
    ASSERT_TRUE(b_->Zero(0, 8 * kMiB, no_hole).ok());
    if (round % 2 == 0) {
      ASSERT_TRUE(b_->Flush().ok());
    }
    std::vector<std::pair<uint64_t, uint64_t>> written;
    for (int i = 0; i < 8; ++i) {
      const uint64_t len = 1 + rng() % 20000;
      const uint64_t off = rng() % (8 * kMiB - len);
      WriteData(off, len, static_cast<uint8_t>(1 + rng() % 255));
      written.emplace_back(off, len);
    }
    for (const auto& [off, len] : written) {
      uint64_t pos = 0;
      for (const Extent& e : Map(0, 8 * kMiB)) {
        const bool overlaps = pos < off + len && off < pos + e.length;
        ASSERT_FALSE(overlaps && (e.flags & kExtentZero))
            << "round " << round << ": data at " << off << "+" << len
            << " reported zero in " << pos << "+" << e.length;
        pos += e.length;
      }
    }
    ExpectZeroesReadZero();
  }
}

TEST_F(FileExtentsTest, ExtentsCanStopEarlyInsideZeroes) {
  ZeroOptions no_hole;
  no_hole.may_trim = false;
  // Alternating allocated zeroes and holes: many extents in one zero range.
  for (uint64_t m = 0; m < 8; m += 2) {
    ASSERT_TRUE(b_->Zero(m * kMiB, kMiB, no_hole).ok());
  }
  int calls = 0;
  ASSERT_TRUE(
      b_->Extents(0, 8 * kMiB, [&](Extent) { return ++calls < 3; }).ok());
  EXPECT_EQ(calls, 3);
  if (unwritten_) {
    std::vector<Extent> all = Map(0, 8 * kMiB);
    ASSERT_EQ(all.size(), 8u);
    for (size_t i = 0; i < all.size(); ++i) {
      EXPECT_EQ(all[i].flags, i % 2 == 0 ? kExtentZero : kHoleZero) << i;
    }
  }
}

TEST_F(FileExtentsTest, CacheReadsAheadAndIsAdvertised) {
  EXPECT_TRUE(b_->caps().can_cache);
  WriteData(0, kMiB, 0x11);
  EXPECT_TRUE(b_->Cache(0, 8 * kMiB).ok());
  EXPECT_TRUE(b_->Cache(8 * kMiB - 1, 1).ok());
}

class ConfinedFileTest : public FileBackendTest {
 protected:
  void SetUp() override {
    FileBackendTest::SetUp();
    allowed_ = dir_ + "/allowed";
    outside_ = dir_ + "/outside";
    std::filesystem::create_directories(allowed_ + "/sub");
    std::filesystem::create_directories(outside_);
    for (const std::string& p : {allowed_ + "/in.img", outside_ + "/out.img"}) {
      int fd = ::open(p.c_str(), O_CREAT | O_WRONLY, 0600);
      ASSERT_EQ(::ftruncate(fd, 4096), 0);
      ::close(fd);
    }
  }
  absl::StatusCode OpenCode(const std::string& path, bool create = false) {
    FileBackendOptions o{path,
                         false,
                         create ? std::optional<uint64_t>(4096) : std::nullopt,
                         create,
                         {allowed_}};
    return FileBackend::Open(o).status().code();
  }
  std::string allowed_, outside_;
};

TEST_F(ConfinedFileTest, OpensBeneathTheAllowedDirectory) {
  EXPECT_EQ(OpenCode(allowed_ + "/in.img"), absl::StatusCode::kOk);
  EXPECT_EQ(OpenCode(allowed_ + "//sub/../in.img"),
            absl::StatusCode::kPermissionDenied);  // ".." is refused
  EXPECT_EQ(OpenCode(outside_ + "/out.img"),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(OpenCode(allowed_ + "/missing.img"), absl::StatusCode::kNotFound);
  // The allowed directory may be named through a symbolic link.
  std::filesystem::create_directory_symlink(allowed_, dir_ + "/alias");
  FileBackendOptions o{
      dir_ + "/alias/in.img", false, std::nullopt, false, {dir_ + "/alias"}};
  EXPECT_TRUE(FileBackend::Open(o).ok());
}

TEST_F(ConfinedFileTest, EveryAllowedDirectoryIsTried) {
  // /allowed/alias is a link the operator made and allowed itself: the path
  // is refused beneath /allowed but opens beneath /allowed/alias.
  std::filesystem::create_directory_symlink(outside_, allowed_ + "/alias");
  FileBackendOptions o{allowed_ + "/alias/out.img",
                       false,
                       std::nullopt,
                       false,
                       {allowed_, allowed_ + "/alias"}};
  EXPECT_TRUE(FileBackend::Open(o).ok()) << FileBackend::Open(o).status();
  o.confine_to = {allowed_};
  EXPECT_EQ(FileBackend::Open(o).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(ConfinedFileTest, NoSymbolicLinkBelowIt) {
  // A link as the last component, even to a file inside.
  std::filesystem::create_symlink(outside_ + "/out.img", allowed_ + "/l.img");
  std::filesystem::create_symlink(allowed_ + "/in.img", allowed_ + "/l2.img");
  EXPECT_EQ(OpenCode(allowed_ + "/l.img"), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(OpenCode(allowed_ + "/l2.img"),
            absl::StatusCode::kPermissionDenied);
  // A link as a directory on the way; a create through it makes nothing.
  std::filesystem::create_directory_symlink(outside_, allowed_ + "/dir");
  EXPECT_EQ(OpenCode(allowed_ + "/dir/out.img"),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(OpenCode(allowed_ + "/dir/new.img", true),
            absl::StatusCode::kPermissionDenied);
  EXPECT_FALSE(std::filesystem::exists(outside_ + "/new.img"));
}

TEST_F(ConfinedFileTest, CreatedFileCanBeRemovedAgain) {
  FileBackendOptions o{allowed_ + "/new.img", false, 8192, true, {allowed_}};
  auto b = FileBackend::Open(o);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE((*b)->created_file());
  (*b)->RemoveCreatedFile();
  EXPECT_FALSE(std::filesystem::exists(allowed_ + "/new.img"));
  // Undoing follows the directory the file was made in, not the path: a
  // link swapped in for that directory cannot redirect the removal.
  std::filesystem::create_directories(allowed_ + "/d");
  o.path = allowed_ + "/d/new.img";
  auto d = FileBackend::Open(o);
  ASSERT_TRUE(d.ok()) << d.status();
  { std::ofstream(outside_ + "/new.img") << "victim"; }
  std::filesystem::rename(allowed_ + "/d", allowed_ + "/d.real");
  std::filesystem::create_directory_symlink(outside_, allowed_ + "/d");
  (*d)->RemoveCreatedFile();
  EXPECT_TRUE(std::filesystem::exists(outside_ + "/new.img"));
  EXPECT_FALSE(std::filesystem::exists(allowed_ + "/d.real/new.img"));
  // A file that existed is never removed.
  auto c = FileBackend::Open(
      {allowed_ + "/in.img", false, std::nullopt, true, {allowed_}});
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE((*c)->created_file());
  (*c)->RemoveCreatedFile();
  EXPECT_TRUE(std::filesystem::exists(allowed_ + "/in.img"));
}

}  // namespace
}  // namespace nbdmgr
