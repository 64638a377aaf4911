// libFuzzer target: the transmission phase. A fixed, valid handshake
// (structured replies, base:allocation, GO "disk") comes first; the input is
// the request stream that follows.

#include "lib/nbd/codec.h"
#include "lib/nbd/wire.h"
#include "spdlog/spdlog.h"
#include "tests/fuzz/fuzz_harness.h"

namespace {

using namespace nbdmgr::nbd;

void Option(std::vector<uint8_t>& out, uint32_t opt,
            const std::vector<uint8_t>& data) {
  uint8_t h[16];
  PutU64(h, kIHaveOpt);
  PutU32(h + 8, opt);
  PutU32(h + 12, static_cast<uint32_t>(data.size()));
  out.insert(out.end(), h, h + 16);
  out.insert(out.end(), data.begin(), data.end());
}

std::vector<uint8_t> Handshake() {
  std::vector<uint8_t> out(4);
  PutU32(out.data(), kClientFlagFixedNewstyle | kClientFlagNoZeroes);
  Option(out, kOptStructuredReply, {});
  std::vector<uint8_t> meta = {0, 0, 0, 4, 'd', 'i', 's', 'k', 0, 0, 0, 1,
                               0, 0, 0, 15};
  const char* q = "base:allocation";
  meta.insert(meta.end(), q, q + 15);
  Option(out, kOptSetMetaContext, meta);
  Option(out, kOptGo, {0, 0, 0, 4, 'd', 'i', 's', 'k', 0, 0});
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static nbdmgr::fuzz::World* world = [] {
    spdlog::set_level(spdlog::level::off);
    return new nbdmgr::fuzz::World();
  }();
  static const std::vector<uint8_t> handshake = Handshake();
  world->Run(handshake, std::span(data, size));
  return 0;
}
