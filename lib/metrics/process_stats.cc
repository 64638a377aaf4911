#include "lib/metrics/process_stats.h"

#include <dirent.h>
#include <unistd.h>

#include <cstdio>

namespace nbdmgr {

ProcessStats ReadProcessStats() {
  ProcessStats s;
  if (FILE* f = std::fopen("/proc/self/statm", "re")) {
    unsigned long long size = 0, resident = 0;
    if (std::fscanf(f, "%llu %llu", &size, &resident) == 2) {
      s.resident_memory_bytes =
          resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    }
    std::fclose(f);
  }
  if (DIR* d = ::opendir("/proc/self/fd")) {
    uint64_t n = 0;
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') ++n;
    }
    ::closedir(d);
    s.open_fds = n > 0 ? n - 1 : 0;  // not the directory's own fd
  }
  return s;
}

}  // namespace nbdmgr
