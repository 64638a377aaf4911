#include "lib/control/export_manager.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "lib/convert/proto_convert.h"
#include "nbdmgr/v1/export.pb.h"

namespace nbdmgr {
namespace {

class FakeSessions : public SessionControl {
 public:
  void StopSessionsOf(const Export& e, bool hard) override {
    calls.push_back({e.name(), hard});
    // The "sessions" go away at once.
    while (e.clients() > 0) const_cast<Export&>(e).RemoveClient();
  }
  std::vector<std::pair<std::string, bool>> calls;
};

class ExportManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/nbdmgr-mgr-XXXXXX";
    dir_ = mkdtemp(tmpl);
    std::filesystem::create_directories(dir_ + "/allowed");
    std::filesystem::create_directories(dir_ + "/other");
    Reopen();
  }
  void TearDown() override {
    manager_.reset();
    registry_ = std::make_unique<ExportRegistry>();
    std::filesystem::remove_all(dir_);
  }
  void Reopen() {
    manager_.reset();
    registry_ = std::make_unique<ExportRegistry>();
    auto m = ExportManager::Create({dir_ + "/state", {dir_ + "/allowed"}},
                                   *registry_, buffers_);
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = std::move(*m);
    manager_->set_session_control(&sessions_);
  }
  ExportConfig Memory(const std::string& name) {
    ExportConfig c;
    c.name = name;
    c.backend = BackendKind::kMemory;
    c.size = 1 << 20;
    return c;
  }
  ExportConfig File(const std::string& path, const std::string& name = "f") {
    ExportConfig c;
    c.name = name;
    c.backend = BackendKind::kFile;
    c.path = path;
    c.size = 1 << 20;
    return c;
  }

  std::string dir_;
  BufferSystem buffers_{32 << 20};
  std::unique_ptr<ExportRegistry> registry_;
  std::unique_ptr<ExportManager> manager_;
  FakeSessions sessions_;
};

TEST_F(ExportManagerTest, CreateGetListDelete) {
  auto info = manager_->CreateExport(Memory("a"));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->persistent);
  EXPECT_EQ(info->size, 1u << 20);
  EXPECT_EQ(manager_->CreateExport(Memory("a")).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(manager_->GetExport("a").ok());
  EXPECT_EQ(manager_->GetExport("zz").status().code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(
      manager_->DeleteExport("a", DeleteMode::kSafe, std::chrono::seconds(1))
          .ok());
  EXPECT_EQ(manager_->GetExport("a").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(ExportManagerTest, ListPages) {
  for (int i = 0; i < 5; ++i)
    ASSERT_TRUE(manager_->CreateExport(Memory("e" + std::to_string(i))).ok());
  auto p1 = manager_->ListExports(2, "");
  ASSERT_TRUE(p1.ok());
  ASSERT_EQ(p1->exports.size(), 2u);
  EXPECT_EQ(p1->next_page_token, "e1");
  auto p2 = manager_->ListExports(2, p1->next_page_token);
  EXPECT_EQ(p2->exports[0].config.name, "e2");
  auto p3 = manager_->ListExports(2, p2->next_page_token);
  EXPECT_EQ(p3->exports.size(), 1u);
  EXPECT_TRUE(p3->next_page_token.empty());
  EXPECT_EQ(manager_->ListExports(-1, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(manager_->ListExports(2, "bad token!").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ExportManagerTest, PersistsAcrossRestartWithUpdates) {
  ASSERT_TRUE(manager_->CreateExport(Memory("keep")).ok());
  ExportUpdate u;
  u.buffer_strategy = BufferStrategy::kExact;
  u.memory_cap_bytes = 8 << 20;
  u.description = "updated";
  ASSERT_TRUE(manager_->UpdateExport("keep", u).ok());
  Reopen();
  auto info = manager_->GetExport("keep");
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->persistent);
  EXPECT_EQ(info->config.description, "updated");
  EXPECT_EQ(info->config.buffers.strategy, BufferStrategy::kExact);
  EXPECT_EQ(info->config.buffers.memory_cap_bytes, 8u << 20);
}

TEST_F(ExportManagerTest, PathPolicy) {
  EXPECT_TRUE(manager_->CreateExport(File(dir_ + "/allowed/a.img")).ok());
  EXPECT_EQ(
      manager_->CreateExport(File(dir_ + "/other/b.img", "b")).status().code(),
      absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(manager_->CreateExport(File(dir_ + "/allowed/../other/c.img", "c"))
                .status()
                .code(),
            absl::StatusCode::kPermissionDenied);
  std::filesystem::create_symlink(dir_ + "/other", dir_ + "/allowed/escape");
  EXPECT_EQ(manager_->CreateExport(File(dir_ + "/allowed/escape/d.img", "d"))
                .status()
                .code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/other/d.img"));
}

TEST_F(ExportManagerTest, DeleteModes) {
  ASSERT_TRUE(manager_->CreateExport(Memory("busy")).ok());
  auto e = registry_->Find("busy");
  ASSERT_TRUE(e->TryAddClient());
  EXPECT_EQ(
      manager_->DeleteExport("busy", DeleteMode::kSafe, std::chrono::seconds(1))
          .status()
          .code(),
      absl::StatusCode::kFailedPrecondition);
  auto closed = manager_->DeleteExport("busy", DeleteMode::kDrain,
                                       std::chrono::seconds(1));
  ASSERT_TRUE(closed.ok());
  EXPECT_EQ(*closed, 1);
  ASSERT_EQ(sessions_.calls.size(), 1u);
  EXPECT_FALSE(sessions_.calls[0].second);  // graceful
  ASSERT_TRUE(manager_->CreateExport(Memory("busy")).ok());
  ASSERT_TRUE(registry_->Find("busy")->TryAddClient());
  ASSERT_TRUE(
      manager_->DeleteExport("busy", DeleteMode::kHard, std::chrono::seconds(1))
          .ok());
  EXPECT_TRUE(sessions_.calls.back().second);  // hard
}

TEST_F(ExportManagerTest, CorruptStateRefusesStart) {
  manager_.reset();  // one manager per state directory at a time
  { std::ofstream(dir_ + "/state/exports.textproto") << "garbage {"; }
  registry_ = std::make_unique<ExportRegistry>();
  auto m = ExportManager::Create({dir_ + "/state", {}}, *registry_, buffers_);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("exports.textproto"),
            absl::string_view::npos);
}

TEST_F(ExportManagerTest, UnopenableExportsAtStartAreFailedAndRetried) {
  ASSERT_TRUE(manager_->CreateExport(File(dir_ + "/allowed/a.img")).ok());
  ASSERT_TRUE(manager_->CreateExport(Memory("m")).ok());
  std::filesystem::rename(dir_ + "/allowed/a.img", dir_ + "/a.img");
  Reopen();  // the file is missing: FAILED, not recreated
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/allowed/a.img"));
  auto info = manager_->GetExport("f");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state, ExportState::kFailed);
  EXPECT_NE(info->failure.find("no such file"), std::string::npos)
      << info->failure;
  EXPECT_EQ(registry_->Find("f"), nullptr);  // not served
  EXPECT_NE(registry_->Find("m"), nullptr);  // the others are
  auto page = manager_->ListExports(0, "");
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->exports.size(), 2u);
  EXPECT_EQ(page->exports[0].config.name, "f");
  ASSERT_EQ(manager_->FailedExports().size(), 1u);
  // A retry that still fails keeps it FAILED; one that works serves it.
  ExportUpdate retry;
  retry.retry = true;
  retry.description = "only if it serves";
  EXPECT_EQ(manager_->UpdateExport("f", retry).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->GetExport("f")->config.description, "");  // unchanged
  EXPECT_EQ(manager_->GetExport("f")->state, ExportState::kFailed);
  std::filesystem::rename(dir_ + "/a.img", dir_ + "/allowed/a.img");
  auto served = manager_->UpdateExport("f", retry);
  ASSERT_TRUE(served.ok()) << served.status();
  EXPECT_EQ(served->state, ExportState::kActive);
  EXPECT_EQ(served->config.description, "only if it serves");
  EXPECT_NE(registry_->Find("f"), nullptr);
  EXPECT_TRUE(manager_->FailedExports().empty());
}

TEST_F(ExportManagerTest, SymlinkSwappedInBeforeRestartIsNotServed) {
  ASSERT_TRUE(manager_->CreateExport(File(dir_ + "/allowed/a.img")).ok());
  { std::ofstream(dir_ + "/other/secret.img") << std::string(1 << 20, 's'); }
  std::filesystem::remove(dir_ + "/allowed/a.img");
  std::filesystem::create_symlink(dir_ + "/other/secret.img",
                                  dir_ + "/allowed/a.img");
  Reopen();
  auto info = manager_->GetExport("f");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state, ExportState::kFailed);
  EXPECT_EQ(registry_->Find("f"), nullptr);
  // A FAILED export is removed at once, and stays removed.
  ASSERT_TRUE(
      manager_->DeleteExport("f", DeleteMode::kSafe, std::chrono::seconds(1))
          .ok());
  Reopen();
  EXPECT_EQ(manager_->GetExport("f").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(ExportManagerTest,
       UpdateValidatesTheWholeConfigAndChangesNothingOnError) {
  ASSERT_TRUE(manager_->CreateExport(Memory("u")).ok());
  ExportUpdate bad;
  bad.description = "changed";
  bad.pool_idle_release = std::chrono::hours(9000);
  EXPECT_EQ(manager_->UpdateExport("u", bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(manager_->GetExport("u")->config.description, "");
  ExportUpdate ok;
  ok.pool_idle_release = std::chrono::hours(8000);
  ASSERT_TRUE(manager_->UpdateExport("u", ok).ok());
  Reopen();  // what was accepted loads
  EXPECT_EQ(manager_->GetExport("u")->config.buffers.pool_idle_release,
            std::chrono::hours(8000));
}

TEST_F(ExportManagerTest, MaxExports) {
  manager_.reset();
  registry_ = std::make_unique<ExportRegistry>();
  ExportManagerOptions o{dir_ + "/state", {}, false, 2};
  auto m = ExportManager::Create(o, *registry_, buffers_);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE((*m)->CreateExport(Memory("a")).ok());
  ASSERT_TRUE((*m)->CreateExport(Memory("b")).ok());
  EXPECT_EQ((*m)->CreateExport(Memory("c")).status().code(),
            absl::StatusCode::kResourceExhausted);
}

// A state directory of nbdmgrd 0.1 (old enum value names in the snapshot;
// see tests/state/fixtures/make-v0.1-state.sh) comes up as it was left:
// every export served with its settings, except the file export whose file
// is gone, which is FAILED with its saved config.
TEST_F(ExportManagerTest, StateOfVersion01ComesUpServed) {
  manager_.reset();
  registry_ = std::make_unique<ExportRegistry>();
  const std::string state = dir_ + "/v0.1";
  std::filesystem::create_directory(state);
  std::filesystem::permissions(state, std::filesystem::perms::owner_all);
  for (const char* name : {"exports.textproto", "exports.log"}) {
    std::filesystem::copy_file(
        std::string(NBDMGR_TESTS_DIR) + "/state/fixtures/v0.1-state/" + name,
        state + "/" + name);
  }
  ExportManagerOptions o{state, {dir_ + "/allowed"}, /*tls_available=*/true};
  auto m = ExportManager::Create(o, *registry_, buffers_);
  ASSERT_TRUE(m.ok()) << m.status();
  auto page = (*m)->ListExports(0, "");
  ASSERT_TRUE(page.ok()) << page.status();
  std::map<std::string, ExportInfo> got;
  for (const ExportInfo& e : page->exports) got[e.config.name] = e;
  ASSERT_EQ(got.size(), 5u);
  for (const char* name :
       {"fixed-off", "grow-optional", "exact-require", "pool-default"}) {
    EXPECT_EQ(got[name].state, ExportState::kActive) << name;
    EXPECT_TRUE(got[name].persistent) << name;
    EXPECT_NE(registry_->Find(name), nullptr) << name;
  }
  EXPECT_EQ(got["fixed-off"].config.buffers.strategy, BufferStrategy::kFixed);
  EXPECT_EQ(got["grow-optional"].config.buffers.strategy,
            BufferStrategy::kGrow);
  EXPECT_EQ(got["grow-optional"].config.tls, TlsMode::kOptional);
  EXPECT_EQ(got["exact-require"].config.buffers.strategy,
            BufferStrategy::kExact);
  EXPECT_EQ(got["exact-require"].config.tls, TlsMode::kRequire);
  EXPECT_EQ(got["pool-default"].config.buffers.strategy, BufferStrategy::kPool);
  const ExportInfo& failed = got["stream-file"];
  EXPECT_EQ(failed.state, ExportState::kFailed);
  EXPECT_FALSE(failed.failure.empty());
  EXPECT_EQ(failed.config.buffers.strategy, BufferStrategy::kStream);
  EXPECT_EQ(failed.config.path, "/tmp/nbdmgr-v0.1-fixture/disks/stream.img");
  EXPECT_EQ(registry_->Find("stream-file"), nullptr);
  EXPECT_EQ(ExportInfoToProto(failed).state(), v1::Export::STATE_FAILED);
  EXPECT_EQ(ExportInfoToProto(got["exact-require"]).tls(),
            v1::TLS_MODE_REQUIRE);
}

}  // namespace
}  // namespace nbdmgr
