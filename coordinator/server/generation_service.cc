#include "coordinator/server/generation_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "rpc/grpc_status.h"

namespace moemesh {
namespace {

v1::FinishReason ToProto(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case FinishReason::kStopSequence: return v1::FINISH_REASON_STOP_SEQUENCE;
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kCancelled: return v1::FINISH_REASON_CANCELLED;
    case FinishReason::kTimeout: return v1::FINISH_REASON_TIMEOUT;
    case FinishReason::kError: return v1::FINISH_REASON_ERROR;
    case FinishReason::kNone: break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

double Seconds(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

GenerationService::GenerationService(const ModelConfig& config, const Tokenizer& tokenizer,
                                     GenerationDefaults defaults)
    : config_(config), tokenizer_(tokenizer), defaults_(std::move(defaults)) {}

void GenerationService::SetReady(StepLoop* loop, std::string placement_summary) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    placement_summary_ = std::move(placement_summary);
  }
  loop_.store(loop);
}

void GenerationService::SetWaitingReason(std::string reason) {
  std::lock_guard<std::mutex> lock(mu_);
  waiting_reason_ = std::move(reason);
}

absl::StatusOr<std::vector<int32_t>> GenerationService::PromptIds(const v1::GenerateRequest& r) const {
  switch (r.prompt_case()) {
    case v1::GenerateRequest::kText: {
      auto ids = tokenizer_.Encode(r.text());
      if (!ids.ok()) return absl::InvalidArgumentError(absl::StrCat("text: ", ids.status().message()));
      return ids;
    }
    case v1::GenerateRequest::kTokenIds:
      return std::vector<int32_t>(r.token_ids().ids().begin(), r.token_ids().ids().end());
    case v1::GenerateRequest::PROMPT_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("prompt: set either text or token_ids");
}

GenerationParams GenerationService::Params(const v1::GenerateRequest& r) const {
  GenerationParams p;
  SamplingParams& s = p.sampling;
  const v1::SamplingParams& in = r.sampling();
  s.temperature = in.has_temperature() ? in.temperature() : defaults_.temperature.value_or(1.0f);
  s.top_k = in.has_top_k() ? in.top_k() : defaults_.top_k.value_or(0);
  s.top_p = in.has_top_p() ? in.top_p() : defaults_.top_p.value_or(1.0f);
  s.min_p = in.has_min_p() ? in.min_p() : 0.0f;
  s.repetition_penalty = in.has_repetition_penalty() ? in.repetition_penalty()
                                                     : defaults_.repetition_penalty.value_or(1.0f);
  s.presence_penalty = in.presence_penalty();
  s.frequency_penalty = in.frequency_penalty();
  if (in.has_seed()) s.seed = in.seed();
  s.logprobs = r.has_logprobs() ? r.logprobs() : -1;
  if (r.has_max_tokens()) p.max_tokens = r.max_tokens();
  p.stop_strings.assign(r.stop().begin(), r.stop().end());
  p.stop_token_ids.assign(r.stop_token_ids().begin(), r.stop_token_ids().end());
  p.ignore_eos = r.ignore_eos();
  return p;
}

grpc::Status GenerationService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                         grpc::ServerWriter<v1::GenerateResponse>* writer) {
  StepLoop* loop = loop_.load();
  if (loop == nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, absl::StrCat("not ready: ", waiting_reason_));
  }
  auto prompt = PromptIds(*request);
  if (!prompt.ok()) return ToGrpcStatus(prompt.status());
  std::optional<StepLoop::Clock::time_point> deadline;
  const auto wall_deadline = context->deadline();
  if (wall_deadline != std::chrono::system_clock::time_point::max()) {
    deadline = StepLoop::Clock::now() + (wall_deadline - std::chrono::system_clock::now());
  }
  auto channel = loop->Submit(std::move(*prompt), Params(*request), deadline);
  if (!channel.ok()) return ToGrpcStatus(channel.status());
  RequestChannel& ch = **channel;
  const std::string request_id =
      request->request_id().empty() ? absl::StrCat("req-", ch.id()) : request->request_id();
  while (true) {
    if (context->IsCancelled()) {
      loop->Cancel(ch.id());
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
    }
    std::vector<StepOutput> outs = ch.Take(std::chrono::milliseconds(50));
    if (outs.empty()) continue;
    v1::GenerateResponse response;
    response.set_request_id(request_id);
    bool finished = false;
    for (StepOutput& o : outs) {
      if (o.token >= 0) {
        v1::GeneratedToken* t = response.add_tokens();
        t->set_token_id(o.token);
        t->set_logprob(o.logprob);
        for (const TokenLogprob& lp : o.top_logprobs) {
          v1::TokenLogprob* x = t->add_top_logprobs();
          x->set_token_id(lp.token);
          x->set_logprob(lp.logprob);
        }
      }
      response.mutable_text()->append(o.text);
      if (o.finish != FinishReason::kNone) {
        finished = true;
        response.set_finish_reason(ToProto(o.finish));
        response.set_matched_stop(o.matched_stop);
      }
    }
    if (finished) {
      const RequestTimings t = ch.timings();
      v1::Usage* usage = response.mutable_usage();
      usage->set_prompt_tokens(ch.prompt_tokens());
      usage->set_completion_tokens(ch.completion_tokens());
      usage->set_cached_tokens(ch.cached_tokens());
      v1::Timings* timings = response.mutable_timings();
      if (t.first_scheduled != RequestTimings::Clock::time_point()) {
        timings->set_queue_seconds(Seconds(t.first_scheduled - t.submitted));
      }
      if (ch.completion_tokens() > 0) {
        timings->set_time_to_first_token_seconds(Seconds(t.first_token - t.submitted));
        if (ch.completion_tokens() > 1) {
          timings->set_seconds_per_output_token(Seconds(t.finished - t.first_token) /
                                                (ch.completion_tokens() - 1));
        }
      }
    }
    if (!writer->Write(response)) {
      loop->Cancel(ch.id());
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    if (finished) return grpc::Status::OK;
  }
}

grpc::Status GenerationService::Tokenize(grpc::ServerContext*, const v1::TokenizeRequest* request,
                                         v1::TokenizeResponse* response) {
  auto ids = tokenizer_.Encode(request->text(), request->add_special_tokens());
  if (!ids.ok()) return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat("text: ", ids.status().message())));
  response->mutable_ids()->Add(ids->begin(), ids->end());
  return grpc::Status::OK;
}

grpc::Status GenerationService::ModelInfo(grpc::ServerContext*, const v1::ModelInfoRequest*,
                                          v1::ModelInfoResponse* response) {
  response->set_architecture(std::string(config_.arch->model_type));
  response->set_context_length(config_.max_position_embeddings);
  response->set_vocab_size(config_.vocab_size);
  response->mutable_eos_token_ids()->Add(defaults_.eos_token_ids.begin(), defaults_.eos_token_ids.end());
  StepLoop* loop = loop_.load();
  {
    std::lock_guard<std::mutex> lock(mu_);
    response->set_placement_summary(loop ? placement_summary_ : waiting_reason_);
  }
  response->set_ready(loop != nullptr);
  if (loop != nullptr) {
    const StepLoopStats s = loop->stats();
    response->set_kv_blocks_total(s.scheduler.kv_blocks_free + s.scheduler.kv_blocks_used);
    response->set_kv_blocks_free(s.scheduler.kv_blocks_free);
    response->set_requests_running(s.scheduler.running);
    response->set_requests_waiting(s.scheduler.waiting);
    response->set_preemptions(s.scheduler.preemptions);
    response->set_kv_blocks_cached(s.scheduler.kv_blocks_cached);
    response->set_cascade_levels(s.scheduler.cascade_levels);
  }
  return grpc::Status::OK;
}

}  // namespace moemesh
