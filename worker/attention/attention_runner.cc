#include "worker/attention/attention_runner.h"

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moemesh {
namespace {

TpLayout LayoutOf(const ModelConfig& config, const Collective* tp) {
  MM_CHECK(tp != nullptr && CheckTpSize(config, tp->size()).ok());
  return MakeTpLayout(config, tp->rank(), tp->size());
}

}  // namespace

AttentionRunner::AttentionRunner(ModelConfig config, ModelWeights weights, AttentionRunnerConfig cfg,
                                 Collective* tp, ExpertClient* experts)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      cfg_(cfg),
      tp_(tp),
      cache_(std::make_unique<PagedKvCache>(config_.num_layers, cfg.num_kv_blocks, cfg.block_size,
                                            weights_.kv_head_end - weights_.kv_head_begin,
                                            config_.head_dim)),
      forward_(std::make_unique<TpForward>(&config_, &weights_, LayoutOf(config_, tp), tp, experts,
                                           cache_.get())),
      block_used_(cfg.num_kv_blocks, false),
      free_blocks_(cfg.num_kv_blocks) {}

AttentionRunner::AttentionRunner(ModelConfig config, AttentionRunnerConfig cfg, Collective* tp,
                                 std::unique_ptr<ForwardPass> forward)
    : config_(std::move(config)),
      cfg_(cfg),
      tp_(tp),
      forward_(std::move(forward)),
      block_used_(cfg.num_kv_blocks, false),
      free_blocks_(cfg.num_kv_blocks) {
  MM_CHECK(tp_ != nullptr && forward_ != nullptr);
}

ShardSpec AttentionRunner::ShardFor(const ModelConfig& config, int rank, int tp_size) {
  return ShardForLayout(MakeTpLayout(config, rank, tp_size));
}

absl::Status AttentionRunner::CheckTp(const ModelConfig& config, int tp_size) {
  return CheckTpSize(config, tp_size);
}

void AttentionRunner::DropFinished(const std::vector<uint64_t>& finished) {
  for (uint64_t id : finished) {
    auto it = requests_.find(id);
    if (it == requests_.end()) continue;  // never scheduled here, or already dropped
    for (int32_t b : it->second.block_table) {
      block_used_[b] = false;
      ++free_blocks_;
    }
    requests_.erase(it);
  }
}

absl::Status AttentionRunner::StageNewRequests(
    const StepPlan& plan, absl::flat_hash_map<uint64_t, RequestState>& fresh) const {
  for (const NewRequest& r : plan.new_requests) {
    if (requests_.contains(r.id) || fresh.contains(r.id)) {
      return absl::FailedPreconditionError(
          absl::StrCat("step ", plan.step, ": new request ", r.id, " already exists"));
    }
    absl::Status valid = r.sampling.Validate();
    if (!valid.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("step ", plan.step, ": request ", r.id, " sampling: ", valid.message()));
    }
    RequestState state;
    state.prompt = r.prompt;
    if (tp_->rank() == 0) {
      state.generated = r.output;
      state.sampler.emplace(r.sampling, /*fallback_seed=*/r.id);
      state.sampler->SkipDraws(r.output.size());
    }
    fresh.emplace(r.id, std::move(state));
  }
  return absl::OkStatus();
}

absl::Status AttentionRunner::StageSequences(const StepPlan& plan,
                                             absl::flat_hash_map<uint64_t, RequestState>& fresh,
                                             std::vector<Staged>& staged) {
  absl::flat_hash_set<uint64_t> seen;
  absl::flat_hash_set<int32_t> claimed;
  for (const ScheduledSequence& s : plan.sequences) {
    const std::string where = absl::StrCat("step ", plan.step, ", request ", s.id);
    if (!seen.insert(s.id).second) {
      return absl::FailedPreconditionError(absl::StrCat(where, ": scheduled twice"));
    }
    RequestState* state = nullptr;
    if (auto it = requests_.find(s.id); it != requests_.end()) {
      state = &it->second;
    } else if (auto f = fresh.find(s.id); f != fresh.end()) {
      state = &f->second;
    } else {
      return absl::FailedPreconditionError(absl::StrCat(where, ": unknown request id (no NewRequest)"));
    }
    if (s.tokens.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": no tokens"));
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": token id ", t, " is outside [0, ",
                                                       config_.vocab_size, ")"));
      }
    }
    if (s.start_position != state->num_cached) {
      return absl::FailedPreconditionError(absl::StrCat(where, ": start_position ", s.start_position,
                                                        " but ", state->num_cached, " tokens are cached"));
    }
    const int64_t end = s.start_position + static_cast<int64_t>(s.tokens.size());
    if (end > config_.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", end, " tokens exceed the context of ",
                                                     config_.max_position_embeddings));
    }
    Staged st{&s, state, state->block_table};
    for (int32_t b : s.new_blocks) {
      if (b < 0 || b >= cfg_.num_kv_blocks) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": KV block ", b, " is outside [0, ",
                                                       cfg_.num_kv_blocks, ")"));
      }
      if (block_used_[b] || !claimed.insert(b).second) {
        return absl::FailedPreconditionError(absl::StrCat(where, ": KV block ", b, " is already in use"));
      }
      st.table.push_back(b);
    }
    const int64_t capacity = static_cast<int64_t>(st.table.size()) * cfg_.block_size;
    if (capacity < end) {
      return absl::FailedPreconditionError(absl::StrCat(where, ": ", st.table.size(), " KV blocks of ",
                                                        cfg_.block_size, " hold ", capacity,
                                                        " tokens; the step needs ", end));
    }
    staged.push_back(std::move(st));
  }
  return absl::OkStatus();
}

void AttentionRunner::Commit(absl::flat_hash_map<uint64_t, RequestState>& fresh,
                             std::vector<Staged>& staged) {
  for (Staged& st : staged) {
    for (int32_t b : st.seq->new_blocks) {
      block_used_[b] = true;
      --free_blocks_;
    }
    st.state->block_table = std::move(st.table);
    st.state->num_cached += static_cast<int64_t>(st.seq->tokens.size());
  }
  staged.clear();  // its pointers into `fresh` die below
  for (auto& [id, state] : fresh) requests_.emplace(id, std::move(state));
}

absl::StatusOr<StepResult> AttentionRunner::Execute(const StepPlan& plan) {
  DropFinished(plan.finished);
  absl::flat_hash_map<uint64_t, RequestState> fresh;
  std::vector<Staged> staged;
  MM_RETURN_IF_ERROR(StageNewRequests(plan, fresh));
  MM_RETURN_IF_ERROR(StageSequences(plan, fresh, staged));

  std::vector<ForwardSequence> batch;
  batch.reserve(staged.size());
  for (const Staged& st : staged) {
    batch.push_back({st.seq->tokens, st.seq->start_position, st.table, st.seq->sample});
  }
  MM_ASSIGN_OR_RETURN(std::vector<float> logits, forward_->Run(batch));

  StepResult result;
  result.step = plan.step;
  if (tp_->rank() == 0) {
    const int64_t vocab = config_.vocab_size;
    int64_t row = 0;
    for (Staged& st : staged) {
      if (!st.seq->sample) continue;
      RequestState& r = *st.state;
      absl::Span<const float> row_logits(logits.data() + row * vocab, vocab);
      SampleResult sample = r.sampler->Sample(row_logits, r.prompt, r.generated);
      r.generated.push_back(sample.token);
      result.tokens.push_back({st.seq->id, std::move(sample)});
      ++row;
    }
    last_logits_ = std::move(logits);
  }
  Commit(fresh, staged);
  return result;
}

}  // namespace moemesh
