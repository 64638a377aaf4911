// nbdctl bitmap add | list | clear | remove | checkpoint.

#include <cstdio>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "cli/flags.h"
#include "lib/convert/bitmap_convert.h"
#include "lib/convert/proto_convert.h"
#include "lib/util/size.h"
#include "nbdmgr/v1/bitmap.grpc.pb.h"

namespace nbdmgr::cli {
namespace {

// The arguments of every bitmap command; each uses some.
struct BitmapArgs {
  std::string export_id;
  std::string bitmap;   // add, clear, remove; checkpoint: the one to freeze
  std::string started;  // checkpoint: the new one
  std::optional<std::string> granularity;
};

void PrintTable(const std::vector<const v1::Bitmap*>& bitmaps) {
  std::printf("%-24s %11s %-6s %-10s %10s %10s\n", "NAME", "GRANULARITY",
              "STATE", "CONSISTENT", "DIRTY", "MEMORY");
  for (const v1::Bitmap* b : bitmaps) {
    std::printf(
        "%-24s %11s %-6s %-10s %10s %10s\n", ResourceId(b->name()).c_str(),
        FormatSize(b->granularity_bytes()).c_str(),
        b->active() ? "active" : "frozen", b->consistent() ? "yes" : "no",
        // An inconsistent bitmap's count means nothing.
        b->consistent() ? FormatSize(b->dirty_bytes()).c_str() : "-",
        FormatSize(b->memory_bytes()).c_str());
  }
  for (const v1::Bitmap* b : bitmaps) {
    if (!b->consistent()) {
      std::printf("%s: inconsistent: %s\n", ResourceId(b->name()).c_str(),
                  b->inconsistent_reason().c_str());
    }
  }
}

void PrintOne(const v1::Bitmap& b) { PrintTable({&b}); }

// The --granularity flag, 0 if not given. Returns a usage message or "".
std::string GranularityOf(const BitmapArgs& a, uint64_t* out) {
  *out = 0;
  if (!a.granularity) return "";
  absl::StatusOr<uint64_t> g = SizeFlag("--granularity", *a.granularity);
  if (!g.ok()) return std::string(g.status().message());
  *out = *g;
  return "";
}

int RunAdd(const Global& g, const BitmapArgs& a, const CLI::App& cmd) {
  v1::CreateBitmapRequest req;
  req.set_export_(ExportResourceName(a.export_id));
  req.set_bitmap_id(a.bitmap);
  uint64_t granularity = 0;
  if (std::string m = GranularityOf(a, &granularity); !m.empty()) {
    return UsageError(m, HelpOf(cmd));
  }
  req.mutable_bitmap()->set_granularity_bytes(granularity);
  return CallAndPrint<v1::BitmapService>(
      g, &v1::BitmapService::Stub::CreateBitmap, req, PrintOne);
}

int RunList(const Global& g, const BitmapArgs& a) {
  v1::ListBitmapsRequest req;
  req.set_export_(ExportResourceName(a.export_id));
  return CallAndPrint<v1::BitmapService>(
      g, &v1::BitmapService::Stub::ListBitmaps, req,
      [](const v1::ListBitmapsResponse& out) {
        std::vector<const v1::Bitmap*> rows;
        for (const v1::Bitmap& b : out.bitmaps()) rows.push_back(&b);
        PrintTable(rows);
      });
}

int RunClear(const Global& g, const BitmapArgs& a) {
  v1::ClearBitmapRequest req;
  req.set_name(BitmapResourceName(a.export_id, a.bitmap));
  return CallAndPrint<v1::BitmapService>(
      g, &v1::BitmapService::Stub::ClearBitmap, req, PrintOne);
}

int RunRemove(const Global& g, const BitmapArgs& a) {
  v1::DeleteBitmapRequest req;
  req.set_name(BitmapResourceName(a.export_id, a.bitmap));
  return CallAndPrint<v1::BitmapService>(
      g, &v1::BitmapService::Stub::DeleteBitmap, req,
      [&a](const v1::DeleteBitmapResponse&) {
        std::printf("removed bitmap %s of %s\n", a.bitmap.c_str(),
                    a.export_id.c_str());
      });
}

int RunCheckpoint(const Global& g, const BitmapArgs& a, const CLI::App& cmd) {
  v1::CheckpointBitmapRequest req;
  req.set_export_(ExportResourceName(a.export_id));
  req.set_frozen(a.bitmap);
  req.set_started(a.started);
  uint64_t granularity = 0;
  if (std::string m = GranularityOf(a, &granularity); !m.empty()) {
    return UsageError(m, HelpOf(cmd));
  }
  req.set_granularity_bytes(granularity);
  return CallAndPrint<v1::BitmapService>(
      g, &v1::BitmapService::Stub::CheckpointBitmap, req,
      [](const v1::CheckpointBitmapResponse& out) {
        PrintTable({&out.frozen(), &out.started()});
      });
}

// Adds the positional argument `name` (required) to `cmd`.
void AddArgument(CLI::App* cmd, const std::string& name, std::string* out,
                 const std::string& description) {
  cmd->add_option(name, *out, description)->required()->type_name("");
}

void AddExportArgument(CLI::App* cmd, BitmapArgs* a) {
  AddArgument(cmd, "EXPORT", &a->export_id, "the export's name");
}

}  // namespace

Command AddBitmapCommand(CLI::App& app, const Global& g) {
  CLI::App* bitmap = AddSubcommand(
      app, "bitmap",
      "Manages an export's dirty bitmaps (add, list, ...).\n"
      "A dirty bitmap records which blocks of an export were written since\n"
      "it was added or cleared, for incremental backups; a checkpoint\n"
      "freezes one and starts the next in one step.");
  // Each subcommand's arguments, shared with its run function.
  auto a = std::make_shared<BitmapArgs>();
  std::vector<Command> commands;

  CLI::App* add =
      AddSubcommand(*bitmap, "add",
                    "Adds an active bitmap, all clean.\n"
                    "It records every write, trim and zero from now on.");
  AddExportArgument(add, a.get());
  AddArgument(add, "NAME", &a->bitmap,
              "the bitmap's name: letters, digits and . _ : -");
  AddOptional(add, "--granularity", "SIZE", &a->granularity,
              "bytes per bit: a power of two from 512 to 2GiB\n"
              "(default 64KiB)");
  commands.push_back({add, [&g, a, add] { return RunAdd(g, *a, *add); }});

  CLI::App* list = AddSubcommand(*bitmap, "list", "Lists an export's bitmaps.");
  AddExportArgument(list, a.get());
  commands.push_back({list, [&g, a] { return RunList(g, *a); }});

  CLI::App* clear = AddSubcommand(
      *bitmap, "clear",
      "Marks every block of a bitmap clean.\n"
      "An inconsistent bitmap (after a crash) becomes consistent again.");
  AddExportArgument(clear, a.get());
  AddArgument(clear, "NAME", &a->bitmap, "the bitmap");
  commands.push_back({clear, [&g, a] { return RunClear(g, *a); }});

  CLI::App* remove = AddSubcommand(*bitmap, "remove", "Removes a bitmap.");
  AddExportArgument(remove, a.get());
  AddArgument(remove, "NAME", &a->bitmap, "the bitmap");
  commands.push_back({remove, [&g, a] { return RunRemove(g, *a); }});

  CLI::App* checkpoint = AddSubcommand(
      *bitmap, "checkpoint",
      "Freezes bitmap FROZEN and starts bitmap NEW in one step.\n"
      "Every write lands in exactly one of them: one acknowledged before the\n"
      "checkpoint in FROZEN, one sent after it in NEW. Back up what FROZEN\n"
      "marks, then remove it.");
  AddExportArgument(checkpoint, a.get());
  AddArgument(checkpoint, "FROZEN", &a->bitmap, "an active bitmap, to freeze");
  AddArgument(checkpoint, "NEW", &a->started, "the name of the new bitmap");
  AddOptional(checkpoint, "--granularity", "SIZE", &a->granularity,
              "NEW's bytes per bit (default: FROZEN's)");
  commands.push_back({checkpoint, [&g, a, checkpoint] {
                        return RunCheckpoint(g, *a, *checkpoint);
                      }});

  return GroupCommand(bitmap, std::move(commands));
}

}  // namespace nbdmgr::cli
