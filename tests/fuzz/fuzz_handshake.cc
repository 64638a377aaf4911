// libFuzzer target: the fixed-newstyle handshake and option haggling.
// The input is everything a client sends after the server's greeting.

#include "spdlog/spdlog.h"
#include "tests/fuzz/fuzz_harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static nbdmgr::fuzz::World* world = [] {
    spdlog::set_level(spdlog::level::off);
    return new nbdmgr::fuzz::World();
  }();
  world->Run({}, std::span(data, size));
  return 0;
}
