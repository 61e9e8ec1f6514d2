#include "model/generation/request_state.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moemesh {

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStop: return "stop";
    case FinishReason::kStopSequence: return "stop_sequence";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kTimeout: return "timeout";
    case FinishReason::kError: return "error";
  }
  return "?";
}

absl::Status ValidateGeneration(absl::Span<const int32_t> prompt, const GenerationParams& params,
                                const ModelLimits& limits) {
  const int64_t n = static_cast<int64_t>(prompt.size());
  if (n == 0) return absl::InvalidArgumentError("prompt is empty: it needs at least 1 token");
  if (n >= limits.context_length) {
    return absl::InvalidArgumentError(absl::StrCat("prompt has ", n, " tokens; the context length is ",
                                                   limits.context_length,
                                                   ", which must leave room for at least 1 new token"));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (prompt[i] < 0 || prompt[i] >= limits.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token ", i, " = ", prompt[i],
                                                     " is outside the vocabulary [0, ", limits.vocab_size, ")"));
    }
  }
  if (params.max_tokens) {
    const int64_t m = *params.max_tokens;
    if (m < 1) return absl::InvalidArgumentError(absl::StrCat("max_tokens = ", m, " must be at least 1"));
    if (n + m > limits.context_length) {
      return absl::InvalidArgumentError(absl::StrCat("max_tokens = ", m, " plus the prompt's ", n,
                                                     " tokens exceeds the context length ",
                                                     limits.context_length, " (at most ",
                                                     limits.context_length - n, ")"));
    }
  }
  MM_RETURN_IF_ERROR(params.sampling.Validate());
  if (params.stop_token_ids.size() > kMaxStopTokenIds) {
    return absl::InvalidArgumentError(absl::StrCat("stop_token_ids has ", params.stop_token_ids.size(),
                                                   " entries; the limit is ", kMaxStopTokenIds));
  }
  for (int32_t id : params.stop_token_ids) {
    if (id < 0 || id >= limits.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("stop_token_ids entry ", id,
                                                     " is outside the vocabulary [0, ", limits.vocab_size, ")"));
    }
  }
  if (params.stop_strings.size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(absl::StrCat("stop has ", params.stop_strings.size(),
                                                   " strings; the limit is ", kMaxStopStrings));
  }
  for (const std::string& s : params.stop_strings) {
    if (s.empty()) return absl::InvalidArgumentError("stop contains an empty string");
    if (s.size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat("stop string of ", s.size(), " bytes exceeds the limit of ",
                                                     kMaxStopStringBytes));
    }
  }
  if (!params.stop_strings.empty() && !limits.has_tokenizer) {
    return absl::InvalidArgumentError("stop strings need a tokenizer, and this model has none");
  }
  return absl::OkStatus();
}

RequestState::RequestState(uint64_t id, std::vector<int32_t> prompt, GenerationParams params,
                           const Tokenizer* tokenizer, std::vector<int32_t> eos_token_ids,
                           int32_t context_length, uint64_t fallback_seed)
    : id_(id),
      prompt_(std::move(prompt)),
      params_(std::move(params)),
      eos_(std::move(eos_token_ids)),
      context_length_(context_length),
      sampler_(params_.sampling, fallback_seed) {
  const int32_t room = context_length_ - static_cast<int32_t>(prompt_.size());
  max_tokens_ = params_.max_tokens ? std::min(*params_.max_tokens, room) : room;
  if (tokenizer != nullptr) {
    text_ = std::make_unique<StopTextStream>(*tokenizer, params_.stop_strings, params_.skip_special_tokens);
  }
}

const std::string& RequestState::text() const {
  static const std::string kEmpty;
  return text_ ? text_->text() : kEmpty;
}

StepOutput RequestState::Accept(absl::Span<const float> logits) {
  MM_CHECK(!finished());
  return AcceptSampled(sampler_.Sample(logits, prompt_, output_));
}

StepOutput RequestState::AcceptSampled(SampleResult s) {
  MM_CHECK(!finished());
  StepOutput out;
  out.request_id = id_;
  out.token = s.token;
  out.logprob = s.logprob;
  out.top_logprobs = std::move(s.top);
  output_.push_back(s.token);
  auto contains = [](const std::vector<int32_t>& v, int32_t x) {
    return std::find(v.begin(), v.end(), x) != v.end();
  };
  if ((!params_.ignore_eos && contains(eos_, s.token)) || contains(params_.stop_token_ids, s.token)) {
    finish_ = FinishReason::kStop;
  } else if (text_) {
    out.text = text_->Push(s.token);
    if (text_->matched()) {
      finish_ = FinishReason::kStopSequence;
      out.matched_stop = *text_->matched();
    }
  }
  if (finish_ == FinishReason::kNone && static_cast<int32_t>(output_.size()) >= max_tokens_) {
    finish_ = FinishReason::kLength;
  }
  if (finish_ != FinishReason::kNone && finish_ != FinishReason::kStopSequence && text_) {
    out.text += text_->Finish();
  }
  out.finish = finish_;
  return out;
}

StepOutput RequestState::Abort(FinishReason reason) {
  StepOutput out;
  out.request_id = id_;
  if (finished()) {
    out.finish = finish_;
    return out;
  }
  finish_ = reason;
  if (text_) out.text = text_->Finish();
  out.finish = reason;
  return out;
}

}  // namespace moemesh
