#include "lib/nbd/negotiation.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "lib/nbd/codec.h"
#include "lib/nbd/transmission_flags.h"
#include "lib/util/strings.h"
#include "spdlog/spdlog.h"

namespace nbdmgr::nbd {
namespace {

absl::Status IoError(const ErrorCode& ec, std::string_view what) {
  if (ec == asio::error::eof || ec == asio::error::connection_reset ||
      ec == asio::error::operation_aborted) {
    return absl::CancelledError(
        absl::StrCat("client closed the connection during ", ToAbsl(what)));
  }
  return absl::UnavailableError(absl::StrCat(ToAbsl(what), ": ", ec.message()));
}

// State of one negotiation.
class Negotiator {
 public:
  Negotiator(Connection& conn, const ExportRegistry& registry,
             const NegotiationOptions& limits)
      : conn_(conn), registry_(registry), limits_(limits) {}

  asio::awaitable<absl::StatusOr<NegotiationResult>> Run();
  // An option got ERR_TLS_REQD.
  bool tls_refused() const { return tls_refused_; }

 private:
  asio::awaitable<ErrorCode> Reply(uint32_t option, uint32_t type,
                                   std::span<const uint8_t> payload = {});
  asio::awaitable<ErrorCode> ReplyError(uint32_t option, uint32_t type,
                                        std::string_view message);
  // Handlers return true when transmission should begin.
  asio::awaitable<absl::StatusOr<bool>> HandleOption(uint32_t option,
                                                     std::vector<uint8_t> data);
  asio::awaitable<absl::StatusOr<bool>> HandleInfoOrGo(
      uint32_t option, const std::vector<uint8_t>& data);
  // The NBD_REP_INFO payload of `type` for `e` as `req` asked for it;
  // empty if that type is not to be sent.
  std::vector<uint8_t> EncodeInfo(InfoType type, const Export& e,
                                  const InfoRequest& req) const;
  asio::awaitable<absl::StatusOr<bool>> HandleExportName(
      const std::vector<uint8_t>& data);
  asio::awaitable<absl::StatusOr<bool>> HandleMetaContext(
      uint32_t option, const std::vector<uint8_t>& data);
  asio::awaitable<absl::StatusOr<bool>> HandleList(
      const std::vector<uint8_t>& data);

  // The export clients may use under `name`: not draining.
  std::shared_ptr<Export> FindServing(const std::string& name) const {
    std::shared_ptr<Export> e = registry_.Find(name);
    return e != nullptr && !e->draining() ? e : nullptr;
  }
  // Whether `e` needs TLS this connection does not have yet.
  bool NeedsTls(const Export& e) const {
    return e.tls_mode() == TlsMode::kRequire && !conn_.tls();
  }
  // Forced TLS: every export needs TLS, so nothing but STARTTLS and ABORT
  // is answered in clear.
  bool ForcedTls() const;
  asio::awaitable<absl::StatusOr<bool>> HandleStartTls(
      const std::vector<uint8_t>& data);
  // ERR_TLS_REQD for `option`, counted as a refusal.
  asio::awaitable<ErrorCode> RefuseWithoutTls(uint32_t option,
                                              std::string_view what);
  void Refused(Refusal r, std::string_view detail) {
    if (limits_.stats != nullptr)
      limits_.stats->Refused(r, conn_.peer(), detail);
  }
  // Counts the client in `e` unless it is full. Returns false if it is.
  bool Admit(Export& e);

  Connection& conn_;
  const ExportRegistry& registry_;
  const NegotiationOptions& limits_;
  NegotiationResult result_;
  // The export the last SET_META_CONTEXT named, if it selected a context,
  // and what it selected.
  std::shared_ptr<Export> meta_export_;
  std::vector<NegotiationResult::MetaContext> meta_;
  bool tls_refused_ = false;  // an option got ERR_TLS_REQD
};

bool Negotiator::ForcedTls() const {
  if (limits_.tls == nullptr || conn_.tls()) return false;
  bool any = false;
  for (const auto& e : registry_.List()) {
    if (e->draining()) continue;
    if (e->tls_mode() != TlsMode::kRequire) return false;
    any = true;
  }
  return any;
}

asio::awaitable<ErrorCode> Negotiator::RefuseWithoutTls(uint32_t option,
                                                        std::string_view what) {
  tls_refused_ = true;
  Refused(Refusal::kTlsRequired,
          absl::StrCat(ToAbsl(NameOfOption(option)), " ", ToAbsl(what),
                       " before STARTTLS"));
  co_return co_await ReplyError(option, kRepErrTlsReqd,
                                absl::StrCat("TLS is required ", ToAbsl(what)));
}

bool Negotiator::Admit(Export& e) {
  if (e.TryAddClient()) return true;
  if (e.draining()) return false;  // deleted while this client negotiated
  Refused(Refusal::kMaxClients,
          absl::StrCat("export \"", e.name(), "\" has its maximum of ",
                       e.max_clients(), " clients"));
  return false;
}

asio::awaitable<absl::StatusOr<bool>> Negotiator::HandleStartTls(
    const std::vector<uint8_t>& data) {
  ErrorCode ec;
  if (limits_.tls == nullptr) {
    ec = co_await ReplyError(kOptStartTls, kRepErrUnsup,
                             "TLS is not configured on this server");
  } else if (!data.empty()) {
    ec = co_await ReplyError(kOptStartTls, kRepErrInvalid,
                             "STARTTLS takes no data");
  } else if (conn_.tls()) {
    ec = co_await ReplyError(kOptStartTls, kRepErrInvalid,
                             "TLS is already in use");
  } else {
    if ((ec = co_await Reply(kOptStartTls, kRepAck))) {
      co_return IoError(ec, "STARTTLS reply");
    }
    if ((ec = co_await conn_.StartTls(limits_.tls->native()))) {
      co_return absl::UnauthenticatedError(
          absl::StrCat("TLS handshake failed: ", ec.message()));
    }
    // Nothing negotiated in clear carries over (the spec's rule).
    result_.structured_replies = false;
    meta_export_ = nullptr;
    meta_.clear();
    SPDLOG_DEBUG("{}: TLS started", conn_.peer());
    co_return false;
  }
  if (ec) co_return IoError(ec, "option reply");
  co_return false;
}

asio::awaitable<ErrorCode> Negotiator::Reply(uint32_t option, uint32_t type,
                                             std::span<const uint8_t> payload) {
  auto header = EncodeOptionReplyHeader(option, type,
                                        static_cast<uint32_t>(payload.size()));
  asio::const_buffer bufs[2] = {asio::buffer(header),
                                asio::buffer(payload.data(), payload.size())};
  co_return co_await conn_.WriteAll(bufs);
}

asio::awaitable<ErrorCode> Negotiator::ReplyError(uint32_t option,
                                                  uint32_t type,
                                                  std::string_view message) {
  SPDLOG_DEBUG("{}: option {} -> {}: {}", conn_.peer(), NameOfOption(option),
               NameOfOptionReply(type), message);
  co_return co_await Reply(
      option, type,
      std::span(reinterpret_cast<const uint8_t*>(message.data()),
                message.size()));
}

asio::awaitable<absl::StatusOr<NegotiationResult>> Negotiator::Run() {
  auto greeting = EncodeGreeting(kFlagFixedNewstyle | kFlagNoZeroes);
  if (ErrorCode ec = co_await conn_.WriteAll(greeting); ec) {
    co_return IoError(ec, "greeting");
  }
  uint8_t client_flags_buf[4];
  if (ErrorCode ec = co_await conn_.ReadExact(client_flags_buf); ec) {
    co_return IoError(ec, "handshake");
  }
  uint32_t client_flags = GetU32(client_flags_buf);
  if (client_flags & ~(kClientFlagFixedNewstyle | kClientFlagNoZeroes)) {
    co_return absl::InvalidArgumentError(
        absl::StrCat("unknown client flags 0x", absl::Hex(client_flags)));
  }
  if (!(client_flags & kClientFlagFixedNewstyle)) {
    co_return absl::InvalidArgumentError(
        "client does not support fixed newstyle negotiation");
  }
  result_.no_zeroes = (client_flags & kClientFlagNoZeroes) != 0;

  for (int count = 0;; ++count) {
    if (count >= limits_.max_options) {
      Refused(Refusal::kTooManyOptions,
              absl::StrCat("more than ", limits_.max_options, " options"));
      co_return absl::ResourceExhaustedError(
          absl::StrCat("more than ", limits_.max_options,
                       " options without choosing an export"));
    }
    uint8_t hdr[kOptionHeaderSize];
    if (ErrorCode ec = co_await conn_.ReadExact(hdr); ec) {
      co_return IoError(ec, "option haggling");
    }
    OptionHeader oh = DecodeOptionHeader(hdr);
    if (oh.magic != kIHaveOpt) {
      co_return absl::InvalidArgumentError(
          absl::StrCat("bad option magic 0x", absl::Hex(oh.magic)));
    }
    SPDLOG_DEBUG("{}: option {} ({}), {} bytes", conn_.peer(),
                 NameOfOption(oh.option), oh.option, oh.length);
    if (oh.length > limits_.max_option_length) {
      if (oh.option == kOptExportName) {
        // EXPORT_NAME has no way to report an error: close.
        co_return absl::InvalidArgumentError(
            absl::StrCat("EXPORT_NAME of ", oh.length, " bytes"));
      }
      Refused(Refusal::kOptionTooLong,
              absl::StrCat(ToAbsl(NameOfOption(oh.option)), " of ", oh.length,
                           " bytes"));
      if (ErrorCode ec = co_await conn_.Skip(oh.length); ec) {
        co_return IoError(ec, "skipping an over-long option");
      }
      if (ErrorCode ec = co_await ReplyError(oh.option, kRepErrTooBig,
                                             "option payload too long");
          ec) {
        co_return IoError(ec, "option reply");
      }
      continue;
    }
    std::vector<uint8_t> data(oh.length);
    if (ErrorCode ec = co_await conn_.ReadExact(data); ec) {
      co_return IoError(ec, "option payload");
    }
    if (oh.option != kOptStartTls && oh.option != kOptAbort && ForcedTls()) {
      if (oh.option == kOptExportName) {
        tls_refused_ = true;
        Refused(Refusal::kTlsRequired, "EXPORT_NAME before STARTTLS");
        co_return absl::PermissionDeniedError(
            "EXPORT_NAME before STARTTLS on a server that requires TLS");
      }
      if (ErrorCode ec = co_await RefuseWithoutTls(oh.option, "on this server");
          ec) {
        co_return IoError(ec, "option reply");
      }
      continue;
    }
    absl::StatusOr<bool> done =
        co_await HandleOption(oh.option, std::move(data));
    if (!done.ok()) co_return done.status();
    if (*done) break;
  }
  co_return std::move(result_);
}

asio::awaitable<absl::StatusOr<bool>> Negotiator::HandleOption(
    uint32_t option, std::vector<uint8_t> data) {
  ErrorCode ec;
  switch (option) {
    case kOptExportName:
      co_return co_await HandleExportName(data);
    case kOptAbort:
      // The client may already have closed; a failed ACK does not matter.
      co_await Reply(option, kRepAck);
      co_return absl::CancelledError("client sent ABORT");
    case kOptList:
      co_return co_await HandleList(data);
    case kOptInfo:
    case kOptGo:
      co_return co_await HandleInfoOrGo(option, data);
    case kOptStructuredReply:
      if (!data.empty()) {
        ec = co_await ReplyError(option, kRepErrInvalid,
                                 "STRUCTURED_REPLY takes no data");
      } else if (result_.structured_replies) {
        ec = co_await ReplyError(option, kRepErrInvalid,
                                 "structured replies already negotiated");
      } else {
        result_.structured_replies = true;
        ec = co_await Reply(option, kRepAck);
      }
      break;
    case kOptListMetaContext:
    case kOptSetMetaContext:
      co_return co_await HandleMetaContext(option, data);
    case kOptStartTls:
      co_return co_await HandleStartTls(data);
    default:
      ec = co_await ReplyError(option, kRepErrUnsup, "option not supported");
      break;
  }
  if (ec) co_return IoError(ec, "option reply");
  co_return false;
}

asio::awaitable<absl::StatusOr<bool>> Negotiator::HandleList(
    const std::vector<uint8_t>& data) {
  ErrorCode ec;
  if (!data.empty()) {
    ec = co_await ReplyError(kOptList, kRepErrInvalid, "LIST takes no data");
  } else {
    for (const auto& e : registry_.List()) {
      if (e->draining() || NeedsTls(*e)) continue;
      // The description is optional in the reply; one over the spec's
      // string limit (never set through the API) is left out.
      std::string description = e->description();
      if (description.size() > kMaxStringLength) description.clear();
      std::vector<uint8_t> payload = EncodeServerReply(e->name(), description);
      if ((ec = co_await Reply(kOptList, kRepServer, payload))) break;
    }
    if (!ec) ec = co_await Reply(kOptList, kRepAck);
  }
  if (ec) co_return IoError(ec, "LIST reply");
  co_return false;
}

asio::awaitable<absl::StatusOr<bool>> Negotiator::HandleExportName(
    const std::vector<uint8_t>& data) {
  // Checked before the copy: the payload may be up to max_option_length.
  if (data.size() > kMaxStringLength) {
    co_return absl::InvalidArgumentError("EXPORT_NAME longer than 4096 bytes");
  }
  std::string name(data.begin(), data.end());
  std::shared_ptr<Export> e = FindServing(name);
  if (e == nullptr) {
    // The protocol has no error reply for EXPORT_NAME: close.
    co_return absl::InvalidArgumentError(
        absl::StrCat("EXPORT_NAME for unknown export \"", name, "\""));
  }
  if (NeedsTls(*e)) {
    tls_refused_ = true;
    Refused(Refusal::kTlsRequired,
            absl::StrCat("EXPORT_NAME \"", name, "\" before STARTTLS"));
    co_return absl::PermissionDeniedError(
        absl::StrCat("export \"", name, "\" requires TLS"));
  }
  if (!Admit(*e)) {
    // EXPORT_NAME has no error reply either.
    co_return absl::ResourceExhaustedError(absl::StrCat(
        "export \"", name, "\" has its maximum number of clients"));
  }
  std::vector<uint8_t> reply = EncodeExportNameReply(
      e->size(), TransmissionFlags(*e, result_.structured_replies),
      result_.no_zeroes);
  if (ErrorCode ec = co_await conn_.WriteAll(reply); ec) {
    e->RemoveClient();
    co_return IoError(ec, "EXPORT_NAME reply");
  }
  result_.export_ = e;
  if (meta_export_ != nullptr && meta_export_ == e)
    result_.meta_contexts = meta_;
  co_return true;
}

std::vector<uint8_t> Negotiator::EncodeInfo(InfoType type, const Export& e,
                                            const InfoRequest& req) const {
  switch (type) {
    case kInfoExport:
      return EncodeInfoExport(e.size(),
                              TransmissionFlags(e, result_.structured_replies));
    case kInfoBlockSize: {
      const BlockSizes& bs = e.block_sizes();
      return EncodeInfoBlockSize(bs.minimum, bs.preferred, bs.maximum_payload);
    }
    case kInfoName:
      if (!req.Requested(kInfoName)) return {};
      return EncodeInfoString(kInfoName, e.name());
    case kInfoDescription: {
      if (!req.Requested(kInfoDescription)) return {};
      // Export::Create and UpdateExport hold it to 4096 bytes; checked
      // again here so one reply stays bounded whatever set it.
      std::string description = e.description();
      if (description.empty() || description.size() > kMaxStringLength) {
        return {};
      }
      return EncodeInfoString(kInfoDescription, description);
    }
  }
  return {};
}

asio::awaitable<absl::StatusOr<bool>> Negotiator::HandleInfoOrGo(
    uint32_t option, const std::vector<uint8_t>& data) {
  ErrorCode ec;
  absl::StatusOr<InfoRequest> req = ParseInfoRequest(data);
  if (!req.ok()) {
    ec = co_await ReplyError(option, kRepErrInvalid,
                             ToStd(req.status().message()));
    if (ec) co_return IoError(ec, "option reply");
    co_return false;
  }
  std::shared_ptr<Export> e = FindServing(req->name);
  if (e == nullptr) {
    ec = co_await ReplyError(
        option, kRepErrUnknown,
        absl::StrCat("no export named \"", req->name, "\""));
    if (ec) co_return IoError(ec, "option reply");
    co_return false;
  }
  if (NeedsTls(*e)) {
    ec = co_await RefuseWithoutTls(
        option, absl::StrCat("for export \"", req->name, "\""));
    if (ec) co_return IoError(ec, "option reply");
    co_return false;
  }
  // GO takes a client slot before anything is sent (released on failure).
  if (option == kOptGo && !Admit(*e)) {
    ec = co_await ReplyError(
        option, kRepErrPolicy,
        absl::StrCat("export \"", req->name, "\" has its maximum of ",
                     e->max_clients(), " clients"));
    if (ec) co_return IoError(ec, "option reply");
    co_return false;
  }
  // Each reply is encoded just before it is sent, so one (at most 4 KiB of
  // description) is in memory at a time, and each type is sent at most once
  // however often the client listed it (as nbdkit does): the request holds a
  // set of types, not the client's list. EXPORT and BLOCK_SIZE always go
  // out: clients that did not ask may still use the block sizes.
  for (InfoType type :
       {kInfoExport, kInfoBlockSize, kInfoName, kInfoDescription}) {
    std::vector<uint8_t> info = EncodeInfo(type, *e, *req);
    if (info.empty()) continue;
    if ((ec = co_await Reply(option, kRepInfo, info))) {
      if (option == kOptGo) e->RemoveClient();
      co_return IoError(ec, "INFO reply");
    }
  }
  if ((ec = co_await Reply(option, kRepAck))) {
    if (option == kOptGo) e->RemoveClient();
    co_return IoError(ec, "ACK");
  }
  if (option == kOptInfo) co_return false;
  result_.export_ = e;
  if (meta_export_ != nullptr && meta_export_ == e)
    result_.meta_contexts = meta_;
  co_return true;
}

asio::awaitable<absl::StatusOr<bool>> Negotiator::HandleMetaContext(
    uint32_t option, const std::vector<uint8_t>& data) {
  const bool set = option == kOptSetMetaContext;
  ErrorCode ec;
  auto finish = [&](ErrorCode e) -> absl::StatusOr<bool> {
    if (e) return IoError(e, "META_CONTEXT reply");
    return false;
  };
  if (set && !result_.structured_replies) {
    co_return finish(
        co_await ReplyError(option, kRepErrInvalid,
                            "SET_META_CONTEXT needs structured replies first"));
  }
  absl::StatusOr<MetaContextRequest> req = ParseMetaContextRequest(data);
  if (!req.ok()) {
    co_return finish(co_await ReplyError(option, kRepErrInvalid,
                                         ToStd(req.status().message())));
  }
  std::shared_ptr<Export> e = FindServing(req->export_name);
  if (e == nullptr) {
    if (set) {
      meta_export_ = nullptr;
      meta_.clear();
    }
    co_return finish(co_await ReplyError(
        option, kRepErrUnknown,
        absl::StrCat("no export named \"", req->export_name, "\"")));
  }
  if (NeedsTls(*e)) {
    co_return finish(co_await RefuseWithoutTls(
        option, absl::StrCat("for export \"", req->export_name, "\"")));
  }
  // Each context is answered once however many queries match it
  // (duplicates included): the reply count is bounded by the contexts the
  // export has, not by the client's query count. LIST with no query lists
  // everything; LIST takes the namespace wildcards "base:", "qemu:" and
  // "qemu:dirty-bitmap:"; SET only whole names, and with no query selects
  // nothing. Inconsistent bitmaps are never offered.
  bool base = req->query_count == 0 && !set;
  std::vector<std::string> names;  // bitmaps matched, in order, once each
  const std::vector<std::string> have = e->bitmaps().ConsistentNames();
  auto take = [&](const std::string& n) {
    if (std::find(names.begin(), names.end(), n) == names.end()) {
      names.push_back(n);
    }
  };
  if (base) {
    for (const std::string& n : have) take(n);
  }
  ForEachQuery(*req, [&](std::string_view q) {
    if (q == kBaseAllocation || (!set && q == "base:")) base = true;
    if (!set && (q == "qemu:" || q == kDirtyBitmapPrefix)) {
      for (const std::string& n : have) take(n);
    } else if (q.starts_with(kDirtyBitmapPrefix)) {
      std::string n(q.substr(kDirtyBitmapPrefix.size()));
      if (std::find(have.begin(), have.end(), n) != have.end()) take(n);
    }
  });
  std::vector<NegotiationResult::MetaContext> chosen;
  std::vector<std::string> chosen_names;
  if (base) {
    chosen.push_back({kBaseAllocationId, nullptr});
    chosen_names.emplace_back(kBaseAllocation);
  }
  for (const std::string& n : names) {
    std::shared_ptr<const DirtyBitmap> bits = e->bitmaps().Find(n);
    if (bits == nullptr) continue;  // removed or made inconsistent meanwhile
    const auto id = static_cast<uint32_t>(kBaseAllocationId + 1 +
                                          chosen.size() - (base ? 1 : 0));
    chosen.push_back({id, std::move(bits)});
    chosen_names.push_back(absl::StrCat(ToAbsl(kDirtyBitmapPrefix), n));
  }
  for (size_t i = 0; i < chosen.size(); ++i) {
    std::vector<uint8_t> payload =
        EncodeMetaContextReply(set ? chosen[i].id : 0, chosen_names[i]);
    if ((ec = co_await Reply(option, kRepMetaContext, payload))) {
      co_return finish(ec);
    }
  }
  if (set) {
    meta_export_ = chosen.empty() ? nullptr : e;
    meta_ = std::move(chosen);
  }
  co_return finish(co_await Reply(option, kRepAck));
}

}  // namespace

asio::awaitable<absl::StatusOr<NegotiationResult>> Negotiate(
    Connection& conn, const ExportRegistry& registry,
    const NegotiationOptions& limits) {
  Negotiator n(conn, registry, limits);
  absl::StatusOr<NegotiationResult> r = co_await n.Run();
  // A client that leaves after being told TLS is required was refused, not
  // merely gone.
  if (n.tls_refused() && absl::IsCancelled(r.status())) {
    co_return absl::PermissionDeniedError(absl::StrCat(
        "client left after TLS was required (", r.status().message(), ")"));
  }
  co_return r;
}

}  // namespace nbdmgr::nbd
