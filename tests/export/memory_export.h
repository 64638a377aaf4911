#ifndef NBDMGR_TESTS_EXPORT_MEMORY_EXPORT_H_
#define NBDMGR_TESTS_EXPORT_MEMORY_EXPORT_H_

#include <memory>
#include <string>

#include "lib/buffer/buffer_policy.h"
#include "lib/export/export.h"

namespace nbdmgr::test {

// A 1 MiB memory export named `name` (read-only if `ro`), on a buffer
// system shared by the tests of one binary.
inline std::shared_ptr<Export> MemoryExport(const std::string& name,
                                            bool ro = false) {
  ExportConfig c;
  c.name = name;
  c.backend = BackendKind::kMemory;
  c.size = 1 << 20;
  c.read_only = ro;
  static BufferSystem buffers(32 << 20);
  return *Export::Create(c, buffers);
}

}  // namespace nbdmgr::test

#endif  // NBDMGR_TESTS_EXPORT_MEMORY_EXPORT_H_
