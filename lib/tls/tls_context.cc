#include "lib/tls/tls_context.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "lib/util/strings.h"

namespace nbdmgr {
namespace {

namespace ssl = boost::asio::ssl;

// The SSL_CTX ex_data slot holding the owning TlsContext.
int ContextIndex() {
  static const int index =
      SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& flag,
                                          const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, " ", path, ": cannot read (", std::strerror(errno), ")"));
  }
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string OpenSslError() {
  unsigned long e = ERR_get_error();
  if (e == 0) return "unknown error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

}  // namespace

absl::StatusOr<std::map<std::string, std::vector<uint8_t>>> ParsePskFile(
    const std::string& path, const std::string& text) {
  std::map<std::string, std::vector<uint8_t>> keys;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    auto bad = [&](std::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--tls-psk ", path, " line ", line_no, ": ", ToAbsl(why)));
    };
    size_t colon = line.find(':');
    if (colon == absl::string_view::npos) {
      return bad("expected IDENTITY:HEXKEY");
    }
    std::string identity(line.substr(0, colon));
    absl::string_view hex = line.substr(colon + 1);
    if (identity.empty()) return bad("empty identity");
    if (hex.empty() || hex.size() % 2 != 0 || hex.size() > 2 * 64) {
      return bad("the key must be 1 to 64 bytes of hex");
    }
    for (char c : hex) {
      if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) {
        return bad("the key is not hex");
      }
    }
    std::string bytes = absl::HexStringToBytes(hex);
    keys[identity] = std::vector<uint8_t>(bytes.begin(), bytes.end());
  }
  if (keys.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-psk ", path, ": no keys in the file"));
  }
  return keys;
}

TlsContext::TlsContext() : ctx_(ssl::context::tls_server) {}

unsigned TlsContext::PskCallback(SSL* ssl, const char* identity,
                                 unsigned char* psk, unsigned max_psk_len) {
  auto* self = static_cast<TlsContext*>(
      SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ContextIndex()));
  if (self == nullptr || identity == nullptr) return 0;
  auto it = self->psk_.find(identity);
  if (it == self->psk_.end() || it->second.size() > max_psk_len) return 0;
  std::memcpy(psk, it->second.data(), it->second.size());
  return static_cast<unsigned>(it->second.size());
}

absl::StatusOr<std::shared_ptr<TlsContext>> TlsContext::Create(
    const TlsFiles& files) {
  if (files.cert_file.empty() != files.key_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key must be given together");
  }
  if (files.empty()) {
    return absl::InvalidArgumentError(
        "TLS needs --tls-cert and --tls-key, or --tls-psk");
  }
  if (!files.ca_file.empty() && files.cert_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls-ca (client certificates) needs --tls-cert and --tls-key");
  }
  std::shared_ptr<TlsContext> t(new TlsContext());
  SSL_CTX* ctx = t->ctx_.native_handle();
  SSL_CTX_set_ex_data(ctx, ContextIndex(), t.get());
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);

  if (!files.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, files.cert_file.c_str()) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-cert ", files.cert_file, ": ", OpenSslError()));
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, files.key_file.c_str(),
                                    SSL_FILETYPE_PEM) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-key ", files.key_file, ": ", OpenSslError()));
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-key ", files.key_file,
                       " does not match --tls-cert ", files.cert_file));
    }
    t->has_cert_ = true;
  }
  if (!files.ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, files.ca_file.c_str(), nullptr) !=
        1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-ca ", files.ca_file, ": ", OpenSslError()));
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                       nullptr);
    t->verify_clients_ = true;
  }
  if (!files.psk_file.empty()) {
    absl::StatusOr<std::string> text =
        ReadWholeFile("--tls-psk", files.psk_file);
    if (!text.ok()) return text.status();
    absl::StatusOr<std::map<std::string, std::vector<uint8_t>>> keys =
        ParsePskFile(files.psk_file, *text);
    if (!keys.ok()) return keys.status();
    t->psk_ = std::move(*keys);
    // TLS 1.3 uses this callback too (as an external PSK with SHA-256);
    // TLS 1.2 needs the PSK cipher suites enabled.
    SSL_CTX_set_psk_server_callback(ctx, &TlsContext::PskCallback);
    SSL_CTX_set_cipher_list(ctx, t->has_cert_ ? "DEFAULT:PSK" : "PSK");
  }
  return t;
}

}  // namespace nbdmgr
