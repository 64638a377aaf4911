#include "lib/control/parse_error_interceptor.h"

namespace nbdmgr {
namespace {

using grpc::experimental::InterceptionHookPoints;

class ParseErrorInterceptor final : public grpc::experimental::Interceptor {
 public:
  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    // A request that failed to parse reaches POST_RECV_MESSAGE without a
    // message (unary and server-streaming calls; the others parse in the
    // handler, which answers for itself).
    if (m->QueryInterceptionHookPoint(
            InterceptionHookPoints::POST_RECV_MESSAGE) &&
        m->GetRecvMessage() == nullptr) {
      unparsed_ = true;
    }
    if (unparsed_ && m->QueryInterceptionHookPoint(
                         InterceptionHookPoints::PRE_SEND_STATUS)) {
      grpc::Status st = m->GetSendStatus();
      if (st.error_code() == grpc::StatusCode::INTERNAL) {
        m->ModifySendStatus(grpc::Status(
            grpc::StatusCode::INVALID_ARGUMENT,
            "the request message cannot be parsed (a string field that is "
            "not valid UTF-8, or a malformed message)"));
      }
    }
    m->Proceed();
  }

 private:
  bool unparsed_ = false;
};

}  // namespace

grpc::experimental::Interceptor*
ParseErrorInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo*) {
  return new ParseErrorInterceptor;
}

}  // namespace nbdmgr
