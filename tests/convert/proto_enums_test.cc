// The enums of the nbdmgr.v1 API: every value named with its type's prefix,
// and the names of nbdmgr 0.1 still accepted as deprecated aliases.

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nbdmgr/v1/bitmap.pb.h"
#include "nbdmgr/v1/config.pb.h"
#include "nbdmgr/v1/daemon.pb.h"
#include "nbdmgr/v1/export.pb.h"
#include "nbdmgr/v1/overlay.pb.h"
#include "nbdmgr/v1/state.pb.h"
#include "nbdmgr/v1/stats.pb.h"

namespace nbdmgr {
namespace {

namespace pb = google::protobuf;

// "BufferStrategy" -> "BUFFER_STRATEGY_".
std::string PrefixOf(const pb::EnumDescriptor& e) {
  std::string out;
  for (char c : e.name()) {
    if (absl::ascii_isupper(c) && !out.empty()) out += '_';
    out += absl::ascii_toupper(c);
  }
  return out + "_";
}

void CollectEnums(const pb::Descriptor& m,
                  std::vector<const pb::EnumDescriptor*>& out) {
  for (int i = 0; i < m.enum_type_count(); ++i) out.push_back(m.enum_type(i));
  for (int i = 0; i < m.nested_type_count(); ++i)
    CollectEnums(*m.nested_type(i), out);
}

std::vector<const pb::EnumDescriptor*> AllEnums() {
  std::vector<const pb::EnumDescriptor*> out;
  for (const pb::FileDescriptor* f :
       {v1::Export::descriptor()->file(), v1::Bitmap::descriptor()->file(),
        v1::ResetOverlayRequest::descriptor()->file(),
        v1::PersistedState::descriptor()->file(),
        v1::DaemonConfig::descriptor()->file(),
        v1::ExportStats::descriptor()->file(),
        v1::GetDaemonRequest::descriptor()->file()}) {
    for (int i = 0; i < f->enum_type_count(); ++i)
      out.push_back(f->enum_type(i));
    for (int i = 0; i < f->message_type_count(); ++i)
      CollectEnums(*f->message_type(i), out);
  }
  return out;
}

// buf's ENUM_VALUE_PREFIX: each current value starts with its type's name.
// A deprecated value is an alias of a current one declared before it, so
// the number prints (text format, JSON) as the current name.
TEST(ProtoEnumsTest, ValuesArePrefixedAndOldNamesAreTrailingAliases) {
  std::vector<const pb::EnumDescriptor*> enums = AllEnums();
  ASSERT_GE(enums.size(), 4u);
  for (const pb::EnumDescriptor* e : enums) {
    const std::string prefix = PrefixOf(*e);
    for (int i = 0; i < e->value_count(); ++i) {
      const pb::EnumValueDescriptor* v = e->value(i);
      const pb::EnumValueDescriptor* printed =
          e->FindValueByNumber(v->number());
      if (!v->options().deprecated()) {
        EXPECT_TRUE(absl::StartsWith(v->name(), prefix))
            << v->full_name() << " lacks the prefix " << prefix;
        EXPECT_EQ(printed, v) << v->full_name();
        continue;
      }
      EXPECT_TRUE(e->options().allow_alias()) << e->full_name();
      EXPECT_LT(printed->index(), v->index()) << v->full_name();
      EXPECT_FALSE(printed->options().deprecated()) << v->full_name();
    }
  }
}

struct Rename {
  const char* field;  // of v1::Export, or "mode" of DeleteExportRequest
  const char* old_name;
  const char* new_name;
};

constexpr Rename kRenames[] = {
    {"buffer_strategy", "FIXED", "BUFFER_STRATEGY_FIXED"},
    {"buffer_strategy", "GROW", "BUFFER_STRATEGY_GROW"},
    {"buffer_strategy", "EXACT", "BUFFER_STRATEGY_EXACT"},
    {"buffer_strategy", "POOL", "BUFFER_STRATEGY_POOL"},
    {"buffer_strategy", "STREAM", "BUFFER_STRATEGY_STREAM"},
    {"tls", "TLS_OFF", "TLS_MODE_OFF"},
    {"tls", "TLS_OPTIONAL", "TLS_MODE_OPTIONAL"},
    {"tls", "TLS_REQUIRE", "TLS_MODE_REQUIRE"},
    {"state", "ACTIVE", "STATE_ACTIVE"},
    {"state", "DRAINING", "STATE_DRAINING"},
    {"state", "FAILED", "STATE_FAILED"},
    {"mode", "SAFE", "DELETE_MODE_SAFE"},
    {"mode", "DRAIN", "DELETE_MODE_DRAIN"},
    {"mode", "HARD", "DELETE_MODE_HARD"},
};

std::unique_ptr<pb::Message> MessageFor(const Rename& r) {
  if (std::string(r.field) == "mode")
    return std::make_unique<v1::DeleteExportRequest>();
  return std::make_unique<v1::Export>();
}

// Text format (state snapshots, config files) and JSON written with the old
// names read back as the same values, which are written with the new names.
TEST(ProtoEnumsTest, OldNamesParseAndNewNamesPrint) {
  for (const Rename& r : kRenames) {
    SCOPED_TRACE(absl::StrCat(r.field, ": ", r.old_name));
    std::unique_ptr<pb::Message> from_text = MessageFor(r);
    ASSERT_TRUE(pb::TextFormat::ParseFromString(
        absl::StrCat(r.field, ": ", r.old_name), from_text.get()));
    std::string text;
    ASSERT_TRUE(pb::TextFormat::PrintToString(*from_text, &text));
    EXPECT_EQ(text, absl::StrCat(r.field, ": ", r.new_name, "\n"));

    std::unique_ptr<pb::Message> from_json = MessageFor(r);
    ASSERT_TRUE(pb::util::JsonStringToMessage(
                    absl::StrCat("{\"", r.field, "\": \"", r.old_name, "\"}"),
                    from_json.get())
                    .ok());
    EXPECT_EQ(from_json->SerializeAsString(), from_text->SerializeAsString());
    std::string json;
    pb::util::JsonPrintOptions o;
    o.preserve_proto_field_names = true;
    ASSERT_TRUE(pb::util::MessageToJsonString(*from_json, &json, o).ok());
    EXPECT_EQ(json, absl::StrCat("{\"", r.field, "\":\"", r.new_name, "\"}"));
  }
}

}  // namespace
}  // namespace nbdmgr
