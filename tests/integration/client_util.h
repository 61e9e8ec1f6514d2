// Test helpers for calling the public API: one Generate call collected to the end.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "moemesh/v1/generate.grpc.pb.h"

namespace moemesh::testing {

struct Completion {
  grpc::Status status;
  std::vector<int32_t> tokens;
  std::string text;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  std::string matched_stop;
  v1::Usage usage;
  int messages = 0;
};

inline Completion Complete(v1::Generation::Stub& stub, const v1::GenerateRequest& request,
                           std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  Completion c;
  auto reader = stub.Generate(&ctx, request);
  v1::GenerateResponse r;
  while (reader->Read(&r)) {
    ++c.messages;
    for (const auto& t : r.tokens()) c.tokens.push_back(t.token_id());
    c.text += r.text();
    if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      c.finish = r.finish_reason();
      c.matched_stop = r.matched_stop();
      c.usage = r.usage();
    }
  }
  c.status = reader->Finish();
  return c;
}

inline v1::GenerateRequest GreedyIds(const std::vector<int32_t>& prompt, int max_tokens) {
  v1::GenerateRequest r;
  r.mutable_token_ids()->mutable_ids()->Add(prompt.begin(), prompt.end());
  r.mutable_sampling()->set_temperature(0);
  r.set_max_tokens(max_tokens);
  r.set_ignore_eos(true);
  return r;
}

inline v1::ModelInfoResponse Info(v1::Generation::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ModelInfoResponse info;
  stub.ModelInfo(&ctx, v1::ModelInfoRequest(), &info);
  return info;
}

}  // namespace moemesh::testing
