#ifndef NBDMGR_CLI_CLIENT_H_
#define NBDMGR_CLI_CLIENT_H_

#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>

namespace nbdmgr::cli {

// Exit codes.
inline constexpr int kExitOk = 0;
inline constexpr int kExitServerError = 1;  // the daemon answered with an error
inline constexpr int kExitUsage = 2;        // bad command line
// UNAVAILABLE: could not reach the daemon, or the daemon could not reach
// the storage the call needs (transient: retry later).
inline constexpr int kExitUnavailable = 3;

// Options common to every subcommand.
struct Global {
  std::string control = "unix:/run/nbdmgr/control.sock";
  std::string output = "table";           // table | json
  std::string tls_ca, tls_cert, tls_key;  // TCP with TLS
  bool insecure = false;                  // TCP without TLS
};

// A channel to the daemon's control API.
std::shared_ptr<grpc::Channel> Connect(const Global& g, std::string* error);
// A stub of `Service` on a channel to the daemon; null, with *exit_code
// set, after printing the usage error of a bad --control.
template <typename Service>
std::unique_ptr<typename Service::Stub> NewStub(const Global& g,
                                                int* exit_code);
// A client context with a deadline.
std::unique_ptr<grpc::ClientContext> Context(int timeout_seconds = 60);
// Prints "nbdctl: CODE: message" to stderr; returns the exit code.
int ReportError(const grpc::Status& s);
// Prints a usage error; returns kExitUsage.
int UsageError(const std::string& message, const std::string& help);
// The message as JSON (snake_case names, defaults included).
std::string ToJson(const google::protobuf::Message& m);
// The last segment of a resource name: "vm1" of "exports/vm1", "b1" of
// "exports/vm1/bitmaps/b1".
std::string ResourceId(const std::string& name);

template <typename Service>
std::unique_ptr<typename Service::Stub> NewStub(const Global& g,
                                                int* exit_code) {
  std::string error;
  std::shared_ptr<grpc::Channel> channel = Connect(g, &error);
  if (channel == nullptr) {
    *exit_code = UsageError("--control: " + error, "");
    return nullptr;
  }
  return Service::NewStub(channel);
}

// Sends `req` with `rpc`, a method of Service's stub, and prints the
// answer: as JSON with -o json, else with `print_table`. Returns the exit
// code.
template <typename Service, typename Request, typename Response>
int CallAndPrint(
    const Global& g,
    grpc::Status (Service::Stub::*rpc)(grpc::ClientContext*, const Request&,
                                       Response*),
    const Request& req,
    const std::function<void(const std::type_identity_t<Response>&)>&
        print_table) {
  int code = kExitOk;
  auto stub = NewStub<Service>(g, &code);
  if (!stub) return code;
  Response out;
  grpc::Status s = ((*stub).*rpc)(Context().get(), req, &out);
  if (!s.ok()) return ReportError(s);
  if (g.output == "json") {
    std::printf("%s", ToJson(out).c_str());
  } else {
    print_table(out);
  }
  return kExitOk;
}

}  // namespace nbdmgr::cli

#endif  // NBDMGR_CLI_CLIENT_H_
