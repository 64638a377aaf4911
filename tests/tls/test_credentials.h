#ifndef NBDMGR_TESTS_TLS_TEST_CREDENTIALS_H_
#define NBDMGR_TESTS_TLS_TEST_CREDENTIALS_H_

// TLS credentials for in-process tests: a self-signed P-256 certificate
// made once per process, a server context holding it, and client contexts
// that accept it. No files, no external tools.

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <boost/asio/ssl/context.hpp>
#include <memory>
#include <stdexcept>

namespace nbdmgr::testing {

struct TestCertificate {
  EVP_PKEY* key = nullptr;
  X509* cert = nullptr;
};

// Lives until the process ends.
inline const TestCertificate& TestCert() {
  static const TestCertificate c = [] {
    TestCertificate t;
    t.key = EVP_EC_gen("P-256");
    t.cert = X509_new();
    if (t.key == nullptr || t.cert == nullptr) {
      throw std::runtime_error("cannot make a test key");
    }
    X509_set_version(t.cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(t.cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(t.cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(t.cert), 24 * 3600);
    X509_NAME* name = X509_get_subject_name(t.cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("test"),
                               -1, -1, 0);
    X509_set_issuer_name(t.cert, name);
    X509_set_pubkey(t.cert, t.key);
    if (X509_sign(t.cert, t.key, EVP_sha256()) == 0) {
      throw std::runtime_error("cannot sign the test certificate");
    }
    return t;
  }();
  return c;
}

// A server context with TestCert(), TLS 1.2 and up.
inline std::unique_ptr<boost::asio::ssl::context> TestServerContext() {
  auto ctx = std::make_unique<boost::asio::ssl::context>(
      boost::asio::ssl::context::tls_server);
  SSL_CTX* c = ctx->native_handle();
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  if (SSL_CTX_use_certificate(c, TestCert().cert) != 1 ||
      SSL_CTX_use_PrivateKey(c, TestCert().key) != 1) {
    throw std::runtime_error("cannot load the test certificate");
  }
  return ctx;
}

struct SslCtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using ClientContext = std::unique_ptr<SSL_CTX, SslCtxFree>;

// A client context that accepts any server certificate and speaks at most
// `max_version` (TLS1_2_VERSION, TLS1_3_VERSION).
inline ClientContext TestClientContext(int max_version) {
  ClientContext ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) throw std::runtime_error("SSL_CTX_new");
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx.get(), max_version);
  return ctx;
}

}  // namespace nbdmgr::testing

#endif  // NBDMGR_TESTS_TLS_TEST_CREDENTIALS_H_
