#include "model/reference/reference_engine.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moemesh {

ReferenceEngine::ReferenceEngine(const ReferenceModel& model, const Tokenizer* tokenizer,
                                 std::vector<int32_t> eos_token_ids)
    : model_(model), tokenizer_(tokenizer), eos_(std::move(eos_token_ids)) {}

ModelLimits ReferenceEngine::limits() const {
  ModelLimits l;
  l.vocab_size = model_.config().vocab_size;
  l.context_length = model_.config().max_position_embeddings;
  l.has_tokenizer = tokenizer_ != nullptr;
  return l;
}

absl::StatusOr<uint64_t> ReferenceEngine::Add(std::vector<int32_t> prompt, GenerationParams params) {
  MM_RETURN_IF_ERROR(ValidateGeneration(prompt, params, limits()));
  const uint64_t id = next_id_++;
  Active a;
  a.state = std::make_unique<RequestState>(id, std::move(prompt), std::move(params), tokenizer_, eos_,
                                           model_.config().max_position_embeddings,
                                           /*fallback_seed=*/0x9e3779b97f4a7c15ull * id);
  a.cache = model_.NewCache();
  requests_.emplace(id, std::move(a));
  return id;
}

void ReferenceEngine::Cancel(uint64_t id) {
  auto it = requests_.find(id);
  if (it != requests_.end()) it->second.cancelled = true;
}

absl::StatusOr<std::vector<StepOutput>> ReferenceEngine::Step() {
  std::vector<StepOutput> outputs;
  std::vector<BatchEntry> batch;
  std::vector<uint64_t> ids;
  std::vector<int32_t> last_tokens(requests_.size());
  for (auto it = requests_.begin(); it != requests_.end();) {
    Active& a = it->second;
    if (a.cancelled) {
      outputs.push_back(a.state->Abort(FinishReason::kCancelled));
      it = requests_.erase(it);
      continue;
    }
    BatchEntry e;
    e.cache = &a.cache;
    if (!a.prefilled) {
      e.tokens = a.state->prompt();
    } else {
      last_tokens[ids.size()] = a.state->output().back();
      e.tokens = absl::MakeConstSpan(&last_tokens[ids.size()], 1);
    }
    batch.push_back(e);
    ids.push_back(it->first);
    ++it;
  }
  if (batch.empty()) return outputs;
  MM_ASSIGN_OR_RETURN(std::vector<std::vector<float>> logits, model_.Forward(absl::MakeSpan(batch)));
  for (size_t i = 0; i < ids.size(); ++i) {
    Active& a = requests_.at(ids[i]);
    a.prefilled = true;
    StepOutput out = a.state->Accept(logits[i]);
    if (out.finish != FinishReason::kNone) requests_.erase(ids[i]);
    outputs.push_back(std::move(out));
  }
  return outputs;
}

absl::StatusOr<std::vector<GenerationResult>> GenerateAll(
    ReferenceEngine& engine, const std::vector<std::vector<int32_t>>& prompts,
    const std::vector<GenerationParams>& params) {
  std::map<uint64_t, size_t> index;
  for (size_t i = 0; i < prompts.size(); ++i) {
    MM_ASSIGN_OR_RETURN(uint64_t id, engine.Add(prompts[i], params[i]));
    index[id] = i;
  }
  std::vector<GenerationResult> results(prompts.size());
  while (engine.HasWork()) {
    MM_ASSIGN_OR_RETURN(std::vector<StepOutput> outs, engine.Step());
    for (StepOutput& o : outs) {
      auto it = index.find(o.request_id);
      if (it == index.end()) continue;
      GenerationResult& r = results[it->second];
      if (o.token >= 0) {
        r.tokens.push_back(o.token);
        r.logprobs.push_back(o.logprob);
      }
      r.text += o.text;
      if (o.finish != FinishReason::kNone) {
        r.finish = o.finish;
        r.matched_stop = o.matched_stop;
      }
    }
  }
  return results;
}

}  // namespace moemesh
