#include "cli/client.h"

#include <google/protobuf/util/json_util.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "lib/util/listen_address.h"

namespace nbdmgr::cli {
namespace {

const char* CodeName(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "ERROR";
  }
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

std::shared_ptr<grpc::Channel> Connect(const Global& g, std::string* error) {
  absl::StatusOr<ListenAddress> a = ParseListenAddress(g.control);
  if (!a.ok()) {
    *error = std::string(a.status().message());
    return nullptr;
  }
  if (a->kind == ListenAddress::Kind::kUnix) {
    return grpc::CreateChannel(absl::StrCat("unix:", a->path),
                               grpc::InsecureChannelCredentials());
  }
  std::string target = absl::StrCat(a->host.find(':') != std::string::npos
                                        ? absl::StrCat("[", a->host, "]")
                                        : a->host,
                                    ":", a->port);
  if (g.insecure)
    return grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  grpc::SslCredentialsOptions ssl;
  if (!g.tls_ca.empty()) ssl.pem_root_certs = Slurp(g.tls_ca);
  if (!g.tls_cert.empty()) ssl.pem_cert_chain = Slurp(g.tls_cert);
  if (!g.tls_key.empty()) ssl.pem_private_key = Slurp(g.tls_key);
  return grpc::CreateChannel(target, grpc::SslCredentials(ssl));
}

std::unique_ptr<grpc::ClientContext> Context(int timeout_seconds) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(timeout_seconds));
  return ctx;
}

int ReportError(const grpc::Status& s) {
  std::fprintf(stderr, "nbdctl: %s: %s\n", CodeName(s.error_code()),
               s.error_message().c_str());
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ? kExitUnavailable
                                                         : kExitServerError;
}

int UsageError(const std::string& message, const std::string& help) {
  std::fprintf(stderr, "nbdctl: %s\n\n%s", message.c_str(), help.c_str());
  return kExitUsage;
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.always_print_primitive_fields = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

std::string ResourceId(const std::string& name) {
  return name.substr(name.rfind('/') + 1);
}

}  // namespace nbdmgr::cli
