#include "lib/metrics/http_request.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "lib/util/strings.h"

namespace nbdmgr {
namespace {

// RFC 9110 tchar: the characters of methods and field names.
bool IsTokenChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool IsToken(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!IsTokenChar(c)) return false;
  }
  return true;
}

std::string_view TrimWhitespace(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return s;
}

size_t SkipEmptyLines(std::string_view data) {
  size_t i = 0;
  while (i < data.size() && (data[i] == '\r' || data[i] == '\n')) ++i;
  return i;
}

// The lines of `head` (without their CRLF or LF), up to the empty line.
std::vector<std::string_view> Lines(std::string_view head) {
  std::vector<std::string_view> lines;
  for (;;) {
    size_t nl = head.find('\n');
    if (nl == std::string_view::npos) break;
    std::string_view line = head.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    head.remove_prefix(nl + 1);
    if (line.empty()) break;
    lines.push_back(line);
  }
  return lines;
}

std::string PathOf(std::string_view target) {
  if (size_t scheme = target.find("://");
      !target.starts_with("/") && scheme != std::string_view::npos) {
    size_t slash = target.find('/', scheme + 3);
    target = slash == std::string_view::npos ? "/" : target.substr(slash);
  }
  return std::string(target.substr(0, target.find_first_of("?#")));
}

}  // namespace

size_t HttpHeadLength(std::string_view data, size_t searched) {
  // A head ending past `searched` has its last line feed but two before it.
  size_t start =
      std::max(SkipEmptyLines(data), searched < 2 ? 0 : searched - 2);
  for (size_t nl = data.find('\n', start); nl != std::string_view::npos;
       nl = data.find('\n', nl + 1)) {
    // An empty line: "\n\n" or "\n\r\n".
    if (nl + 1 < data.size() && data[nl + 1] == '\n') return nl + 2;
    if (nl + 2 < data.size() && data[nl + 1] == '\r' && data[nl + 2] == '\n') {
      return nl + 3;
    }
  }
  return 0;
}

absl::StatusOr<HttpRequest> ParseHttpRequestHead(std::string_view head) {
  auto bad = [](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed HTTP request: ", ToAbsl(why)));
  };
  std::vector<std::string_view> lines =
      Lines(head.substr(SkipEmptyLines(head)));
  if (lines.empty()) return bad("no request line");

  // method SP request-target SP HTTP-version
  std::string_view line = lines[0];
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos ||
      line.find(' ', sp2 + 1) != std::string_view::npos) {
    return bad("request line is not METHOD TARGET VERSION");
  }
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (!IsToken(method)) return bad("bad method");
  if (target.empty()) return bad("empty request target");
  for (char c : target) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return bad("control character in the request target");
    }
  }
  if (version.size() != 8 || !version.starts_with("HTTP/") ||
      !absl::ascii_isdigit(static_cast<unsigned char>(version[5])) ||
      version[6] != '.' ||
      !absl::ascii_isdigit(static_cast<unsigned char>(version[7]))) {
    return bad("bad HTTP version");
  }
  if (version[5] != '1') {
    return absl::UnimplementedError(
        absl::StrCat("HTTP version ", ToAbsl(version), " is not supported"));
  }

  HttpRequest req;
  req.method = std::string(method);
  req.target = std::string(target);
  req.path = PathOf(target);
  req.minor_version = version[7] == '0' ? 0 : 1;
  bool close = false;
  bool keep_alive = false;
  for (size_t i = 1; i < lines.size(); ++i) {
    std::string_view field = lines[i];
    if (field.front() == ' ' || field.front() == '\t') {
      return bad("obsolete header line folding");
    }
    size_t colon = field.find(':');
    if (colon == std::string_view::npos || !IsToken(field.substr(0, colon))) {
      return bad("bad header field");
    }
    absl::string_view name = ToAbsl(field.substr(0, colon));
    std::string_view value = TrimWhitespace(field.substr(colon + 1));
    if (absl::EqualsIgnoreCase(name, "connection")) {
      for (std::string_view rest = value; !rest.empty();) {
        size_t comma = rest.find(',');
        absl::string_view option =
            ToAbsl(TrimWhitespace(rest.substr(0, comma)));
        close = close || absl::EqualsIgnoreCase(option, "close");
        keep_alive = keep_alive || absl::EqualsIgnoreCase(option, "keep-alive");
        rest = comma == std::string_view::npos ? "" : rest.substr(comma + 1);
      }
    } else if (absl::EqualsIgnoreCase(name, "content-length")) {
      uint64_t length = 0;
      if (value.empty() ||
          value.find_first_not_of("0123456789") != std::string_view::npos ||
          !absl::SimpleAtoi(ToAbsl(value), &length)) {
        return bad("bad Content-Length");
      }
      req.has_body = req.has_body || length > 0;
    } else if (absl::EqualsIgnoreCase(name, "transfer-encoding")) {
      req.has_body = true;
    }
  }
  req.keep_alive = !close && (req.minor_version >= 1 || keep_alive);
  return req;
}

}  // namespace nbdmgr
