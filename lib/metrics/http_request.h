#ifndef NBDMGR_LIB_METRICS_HTTP_REQUEST_H_
#define NBDMGR_LIB_METRICS_HTTP_REQUEST_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace nbdmgr {

// What the metrics endpoint needs from an HTTP/1.x request head.
struct HttpRequest {
  std::string method;  // as sent (methods are case-sensitive): "GET"
  std::string target;  // request-target as sent: "/metrics?name[]=x"
  // The path of `target`: without the query or fragment, and without
  // "scheme://authority" for an absolute-form target. "*" stays "*".
  std::string path;
  int minor_version = 1;  // HTTP/1.<minor_version>: 0 or 1
  // The client allows another request on this connection: HTTP/1.1 unless
  // "Connection: close", HTTP/1.0 only with "Connection: keep-alive".
  bool keep_alive = true;
  // The request announces a body (Content-Length above 0 or any
  // Transfer-Encoding); the endpoint never reads one.
  bool has_body = false;
};

// The length of the request head at the start of `data`: the request line,
// the header fields and the empty line ending them (CRLF or bare LF line
// ends; empty lines before the request line are counted in). 0 if `data`
// does not hold a whole head yet. `searched`: how much of `data` is known
// to hold no whole head (say, its size at a previous call that returned 0),
// so data read a byte at a time is searched once, not over and over.
size_t HttpHeadLength(std::string_view data, size_t searched = 0);

// Parses one whole head as delimited by HttpHeadLength. InvalidArgument
// (answer 400) if it is malformed; Unimplemented (answer 505) if it is
// well formed but not HTTP/1.0 or HTTP/1.1.
absl::StatusOr<HttpRequest> ParseHttpRequestHead(std::string_view head);

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_METRICS_HTTP_REQUEST_H_
