#ifndef NBDMGR_LIB_CONTROL_PARSE_ERROR_INTERCEPTOR_H_
#define NBDMGR_LIB_CONTROL_PARSE_ERROR_INTERCEPTOR_H_

#include <grpcpp/support/server_interceptor.h>

namespace nbdmgr {

// gRPC answers a request message it cannot parse (for one, a string field
// holding invalid UTF-8) with INTERNAL, as if the daemon had failed. This
// interceptor turns that answer into INVALID_ARGUMENT, which is what it is:
// the client's mistake. Every other status passes through unchanged.
class ParseErrorInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;
};

}  // namespace nbdmgr

#endif  // NBDMGR_LIB_CONTROL_PARSE_ERROR_INTERCEPTOR_H_
