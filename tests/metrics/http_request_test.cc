#include "lib/metrics/http_request.h"

#include <gtest/gtest.h>

#include <string>

namespace nbdmgr {
namespace {

TEST(HttpHeadLengthTest, ZeroUntilTheEmptyLine) {
  EXPECT_EQ(HttpHeadLength(""), 0u);
  EXPECT_EQ(HttpHeadLength("GET /metr"), 0u);
  EXPECT_EQ(HttpHeadLength("GET /metrics HTTP/1.1\r\nHost: x\r\n"), 0u);
  EXPECT_EQ(HttpHeadLength("GET /metrics HTTP/1.1\r\nHost: x\r\n\r"), 0u);
}

TEST(HttpHeadLengthTest, CountsTheEmptyLineAndNotWhatFollows) {
  std::string head = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
  EXPECT_EQ(HttpHeadLength(head), head.size());
  EXPECT_EQ(HttpHeadLength(head + "GET /next HTTP/1.1\r\n\r\n"), head.size());
}

TEST(HttpHeadLengthTest, AcceptsBareLineFeeds) {
  std::string head = "GET /metrics HTTP/1.0\nHost: x\n\n";
  EXPECT_EQ(HttpHeadLength(head), head.size());
}

TEST(HttpHeadLengthTest, ResumedSearchFindsTheSameEnd) {
  for (std::string head :
       {"GET / HTTP/1.1\r\nA: b\r\n\r\n", "\r\n\nGET / HTTP/1.0\nA: b\n\n"}) {
    for (size_t k = 0; k < head.size(); ++k) {
      ASSERT_EQ(HttpHeadLength(head.substr(0, k)), 0u) << k;
      EXPECT_EQ(HttpHeadLength(head, k), head.size()) << k;
    }
  }
}

TEST(HttpHeadLengthTest, LeadingEmptyLinesAreNotAnEmptyHead) {
  EXPECT_EQ(HttpHeadLength("\r\n\r\n"), 0u);
  std::string head = "\r\nGET /metrics HTTP/1.1\r\n\r\n";
  EXPECT_EQ(HttpHeadLength(head), head.size());
}

TEST(ParseHttpRequestHeadTest, Get) {
  absl::StatusOr<HttpRequest> r = ParseHttpRequestHead(
      "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9810\r\n"
      "Accept: text/plain\r\n\r\n");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->method, "GET");
  EXPECT_EQ(r->target, "/metrics");
  EXPECT_EQ(r->path, "/metrics");
  EXPECT_EQ(r->minor_version, 1);
  EXPECT_TRUE(r->keep_alive);
  EXPECT_FALSE(r->has_body);
}

TEST(ParseHttpRequestHeadTest, PathDropsQueryFragmentAndAuthority) {
  EXPECT_EQ(ParseHttpRequestHead("GET /metrics?x=1&y HTTP/1.1\r\n\r\n")->path,
            "/metrics");
  EXPECT_EQ(ParseHttpRequestHead("GET /metrics#top HTTP/1.1\r\n\r\n")->path,
            "/metrics");
  EXPECT_EQ(
      ParseHttpRequestHead("GET http://h:1/metrics?q HTTP/1.1\r\n\r\n")->path,
      "/metrics");
  EXPECT_EQ(ParseHttpRequestHead("GET http://h:1 HTTP/1.1\r\n\r\n")->path, "/");
  EXPECT_EQ(ParseHttpRequestHead("OPTIONS * HTTP/1.1\r\n\r\n")->path, "*");
}

TEST(ParseHttpRequestHeadTest, ConnectionCloseEndsKeepAlive) {
  EXPECT_FALSE(
      ParseHttpRequestHead("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
          ->keep_alive);
  EXPECT_FALSE(
      ParseHttpRequestHead("GET / HTTP/1.1\r\nconnection:  TE, Close \r\n\r\n")
          ->keep_alive);
  EXPECT_TRUE(ParseHttpRequestHead("GET / HTTP/1.1\r\nConnection: TE\r\n\r\n")
                  ->keep_alive);
}

TEST(ParseHttpRequestHeadTest, Http10KeepsAliveOnlyWhenAsked) {
  absl::StatusOr<HttpRequest> r =
      ParseHttpRequestHead("GET /metrics HTTP/1.0\r\n\r\n");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->minor_version, 0);
  EXPECT_FALSE(r->keep_alive);
  EXPECT_TRUE(
      ParseHttpRequestHead("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
          ->keep_alive);
}

TEST(ParseHttpRequestHeadTest, BodyIsAnnounced) {
  EXPECT_FALSE(
      ParseHttpRequestHead("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
          ->has_body);
  EXPECT_TRUE(
      ParseHttpRequestHead("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
          ->has_body);
  EXPECT_TRUE(ParseHttpRequestHead(
                  "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                  ->has_body);
}

TEST(ParseHttpRequestHeadTest, LeadingEmptyLinesAreSkipped) {
  absl::StatusOr<HttpRequest> r =
      ParseHttpRequestHead("\r\n\r\nHEAD /metrics HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->method, "HEAD");
}

TEST(ParseHttpRequestHeadTest, MalformedIsInvalidArgument) {
  for (const char* head : {
           "\r\n",
           "GET /metrics\r\n\r\n",
           "GET  /metrics HTTP/1.1\r\n\r\n",
           "GET /metrics HTTP/1.1 x\r\n\r\n",
           "G(T /metrics HTTP/1.1\r\n\r\n",
           "GET /metrics HTTP/1\r\n\r\n",
           "GET /metrics http/1.1\r\n\r\n",
           "GET /met\x01rics HTTP/1.1\r\n\r\n",
           "GET /metrics HTTP/1.1\r\nNo colon\r\n\r\n",
           "GET /metrics HTTP/1.1\r\nBad name: x\r\n\r\n",
           "GET /metrics HTTP/1.1\r\n: x\r\n\r\n",
           "GET /metrics HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
           "GET /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
           "GET /metrics HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
           "GET /metrics HTTP/1.1\r\nContent-Length: 99999999999999999999999"
           "\r\n\r\n",
       }) {
    absl::StatusOr<HttpRequest> r = ParseHttpRequestHead(head);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << head;
  }
}

TEST(ParseHttpRequestHeadTest, OtherVersionsAreUnimplemented) {
  EXPECT_EQ(
      ParseHttpRequestHead("GET /metrics HTTP/2.0\r\n\r\n").status().code(),
      absl::StatusCode::kUnimplemented);
  EXPECT_EQ(
      ParseHttpRequestHead("GET /metrics HTTP/0.9\r\n\r\n").status().code(),
      absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace nbdmgr
