#include "cli/generate_command.h"

#include <chrono>
#include <cstdio>

#include <grpcpp/grpcpp.h>

#include "moemesh/v1/generate.grpc.pb.h"

namespace moemesh {

int GenerateCommand(const GenerateCommandConfig& cfg) {
  auto stub = v1::Generation::NewStub(grpc::CreateChannel(cfg.server, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  if (cfg.timeout_s > 0) {
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(cfg.timeout_s * 1000)));
  }
  auto reader = stub->Generate(&ctx, cfg.request);
  v1::GenerateResponse response;
  v1::GenerateResponse last;
  if (cfg.request.has_text()) std::fputs(cfg.request.text().c_str(), stdout);
  while (reader->Read(&response)) {
    std::fputs(response.text().c_str(), stdout);
    std::fflush(stdout);
    if (cfg.show_logprobs) {
      for (const auto& t : response.tokens()) std::fprintf(stderr, "token %d logprob %.4f\n", t.token_id(), t.logprob());
    }
    last = response;
  }
  std::fputs("\n", stdout);
  std::fflush(stdout);
  const grpc::Status status = reader->Finish();
  if (!status.ok()) {
    std::fprintf(stderr, "moemesh generate: %s: %s\n",
                 status.error_code() == grpc::StatusCode::UNAVAILABLE ? "UNAVAILABLE" : "error",
                 status.error_message().c_str());
    return 1;
  }
  std::fprintf(stderr,
               "finish: %s%s | prompt %d tokens, generated %d tokens | queue %.3f s, time to first token %.3f s, "
               "%.2f ms per token\n",
               v1::FinishReason_Name(last.finish_reason()).c_str(),
               last.matched_stop().empty() ? "" : (" (\"" + last.matched_stop() + "\")").c_str(),
               last.usage().prompt_tokens(), last.usage().completion_tokens(), last.timings().queue_seconds(),
               last.timings().time_to_first_token_seconds(), last.timings().seconds_per_output_token() * 1000);
  return 0;
}

}  // namespace moemesh
