#ifndef NBDMGR_LIB_TLS_TLS_CONTEXT_H_
#define NBDMGR_LIB_TLS_TLS_CONTEXT_H_

#include <boost/asio/ssl/context.hpp>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

struct ssl_st;  // OpenSSL's SSL

namespace nbdmgr {

// Where the server's TLS credentials come from. Either a certificate and
// key (X.509), a PSK file, or both.
struct TlsFiles {
  std::string cert_file;  // PEM certificate (chain)
  std::string key_file;   // PEM private key
  std::string ca_file;    // if set: clients must present a certificate
                          // signed by this CA
  std::string psk_file;   // psktool format: one "identity:hexkey" per line
  bool empty() const { return cert_file.empty() && psk_file.empty(); }
};

// Parses a psktool key file. InvalidArgument naming the file and line for a
// malformed one (no ':' , bad hex, empty identity or key).
absl::StatusOr<std::map<std::string, std::vector<uint8_t>>> ParsePskFile(
    const std::string& path, const std::string& text);

// The server side of NBD's STARTTLS: TLS 1.2+ with X.509 certificates and/or
// pre-shared keys. Immutable after Create; shared by every connection.
class TlsContext {
 public:
  // Loads and checks every file now, so a bad one stops the daemon at
  // start. InvalidArgument naming the file and what is wrong with it.
  static absl::StatusOr<std::shared_ptr<TlsContext>> Create(
      const TlsFiles& files);

  boost::asio::ssl::context& native() { return ctx_; }
  bool has_certificate() const { return has_cert_; }
  bool has_psk() const { return !psk_.empty(); }
  bool verifies_clients() const { return verify_clients_; }

 private:
  TlsContext();
  // OpenSSL's PSK lookup (SSL_psk_server_cb_func).
  static unsigned PskCallback(ssl_st* ssl, const char* identity,
                              unsigned char* psk, unsigned max_psk_len);

  boost::asio::ssl::context ctx_;
  std::map<std::string, std::vector<uint8_t>> psk_;
  bool has_cert_ = false;
  bool verify_clients_ = false;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_TLS_TLS_CONTEXT_H_
