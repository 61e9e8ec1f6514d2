#include "worker/attention/attention_runner.h"

#include <algorithm>
#include <string>
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
      block_refs_(cfg.num_kv_blocks, 0),
      free_blocks_(cfg.num_kv_blocks) {}

AttentionRunner::AttentionRunner(ModelConfig config, AttentionRunnerConfig cfg, Collective* tp,
                                 std::unique_ptr<ForwardPass> forward)
    : config_(std::move(config)),
      cfg_(cfg),
      tp_(tp),
      forward_(std::move(forward)),
      block_refs_(cfg.num_kv_blocks, 0),
      free_blocks_(cfg.num_kv_blocks) {
  MM_CHECK(tp_ != nullptr && forward_ != nullptr);
}

ShardSpec AttentionRunner::ShardFor(const ModelConfig& config, int rank, int tp_size) {
  return ShardForLayout(MakeTpLayout(config, rank, tp_size));
}

absl::Status AttentionRunner::CheckTp(const ModelConfig& config, int tp_size) {
  return CheckTpSize(config, tp_size);
}

void AttentionRunner::Hold(int32_t block) {
  if (block_refs_[block]++ == 0) --free_blocks_;
}

void AttentionRunner::DropFinished(const std::vector<uint64_t>& finished) {
  for (uint64_t id : finished) {
    auto it = requests_.find(id);
    if (it == requests_.end()) continue;  // never scheduled here, or already dropped
    for (int32_t b : it->second.block_table) {
      MM_CHECK(block_refs_[b] > 0);
      if (--block_refs_[b] == 0) ++free_blocks_;
    }
    requests_.erase(it);
  }
}

absl::Status AttentionRunner::StageCopies(const StepPlan& plan, Claims& claims) const {
  absl::flat_hash_set<int32_t> sources;
  for (const BlockCopy& c : plan.block_copies) sources.insert(c.src);
  for (size_t i = 0; i < plan.block_copies.size(); ++i) {
    const BlockCopy& c = plan.block_copies[i];
    const std::string where = absl::StrCat("step ", plan.step, ", block copy ", i, " (", c.src,
                                           " -> ", c.dst, ")");
    for (int32_t b : {c.src, c.dst}) {
      if (b < 0 || b >= cfg_.num_kv_blocks) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": KV block ", b, " is outside [0, ",
                                                       cfg_.num_kv_blocks, ")"));
      }
    }
    if (c.src == c.dst) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": copies a block onto itself"));
    }
    if (sources.contains(c.dst)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": KV block ", c.dst, " is both a copy source and a destination"));
    }
    if (!claims.fresh.insert(c.dst).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": a second copy into KV block ", c.dst));
    }
    if (block_refs_[c.dst] > 0) {
      return absl::FailedPreconditionError(absl::StrCat(where, ": KV block ", c.dst, " is in use by ",
                                                        block_refs_[c.dst], " request(s)"));
    }
  }
  return absl::OkStatus();
}

absl::Status AttentionRunner::StageNewRequests(const StepPlan& plan,
                                               absl::flat_hash_map<uint64_t, RequestState>& fresh,
                                               Claims& claims) const {
  for (const NewRequest& r : plan.new_requests) {
    if (requests_.contains(r.id) || fresh.contains(r.id)) {
      return absl::FailedPreconditionError(
          absl::StrCat("step ", plan.step, ": new request ", r.id, " already exists"));
    }
    const std::string where = absl::StrCat("step ", plan.step, ": request ", r.id);
    absl::Status valid = r.sampling.Validate();
    if (!valid.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, " sampling: ", valid.message()));
    }
    // A cached prefix: blocks covering exactly prefix_tokens, at least one token left to compute,
    // a partly filled last block only as this plan's private copy.
    const int64_t total = static_cast<int64_t>(r.prompt.size() + r.output.size());
    if (r.prefix_tokens < 0 || (r.prefix_tokens > 0 && r.prefix_tokens >= total)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": prefix_tokens = ", r.prefix_tokens,
                                                     " must be in [0, ", total,
                                                     ") (the last token is always computed)"));
    }
    const int64_t bs = cfg_.block_size;
    const int64_t needed = (r.prefix_tokens + bs - 1) / bs;
    if (static_cast<int64_t>(r.prefix_blocks.size()) != needed) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", r.prefix_blocks.size(),
                                                     " prefix blocks for ", r.prefix_tokens,
                                                     " cached tokens in blocks of ", bs, " (needs ",
                                                     needed, ")"));
    }
    absl::flat_hash_set<int32_t> seen;
    for (int32_t b : r.prefix_blocks) {
      if (b < 0 || b >= cfg_.num_kv_blocks) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": prefix KV block ", b,
                                                       " is outside [0, ", cfg_.num_kv_blocks, ")"));
      }
      if (!seen.insert(b).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": prefix KV block ", b, " listed twice"));
      }
    }
    if (r.prefix_tokens % bs != 0 && !claims.fresh.contains(r.prefix_blocks.back())) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": the partly filled prefix KV block ", r.prefix_blocks.back(),
          " is not the destination of a block copy in this step (it would be written in place)"));
    }
    for (int32_t b : r.prefix_blocks) ++claims.prefix_holds[b];
    RequestState state;
    state.prompt = r.prompt;
    state.block_table = r.prefix_blocks;
    state.num_cached = r.prefix_tokens;
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
                                             Claims& claims, std::vector<Staged>& staged) {
  absl::flat_hash_set<uint64_t> seen;
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
      if (block_refs_[b] > 0 || claims.prefix_holds.contains(b) || !claims.fresh.insert(b).second) {
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
    // Writes go only to blocks no other request holds (shared blocks are copied first).
    const int64_t own_blocks = static_cast<int64_t>(state->block_table.size());
    const int64_t last_written = (end - 1) / cfg_.block_size;
    for (int64_t i = s.start_position / cfg_.block_size; i < own_blocks && i <= last_written; ++i) {
      const int32_t b = st.table[i];
      auto held = claims.prefix_holds.find(b);
      const int32_t others =
          block_refs_[b] + (held == claims.prefix_holds.end() ? 0 : held->second) - 1;
      if (others > 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            where, ": would write KV block ", b, ", which ", others,
            " other request(s) hold (shared blocks must be copied before they are written)"));
      }
    }
    staged.push_back(std::move(st));
  }
  return absl::OkStatus();
}

absl::Status AttentionRunner::StageCascade(const StepPlan& plan, const std::vector<Staged>& staged,
                                           std::vector<ForwardCascadeLevel>& levels) const {
  if (plan.cascade.empty()) return absl::OkStatus();
  absl::flat_hash_map<uint64_t, int32_t> index;  // request id -> batch index
  for (size_t i = 0; i < staged.size(); ++i) index[staged[i].seq->id] = static_cast<int32_t>(i);
  absl::flat_hash_map<int32_t, std::vector<std::pair<int32_t, int32_t>>> ranges;
  const int64_t bs = cfg_.block_size;
  for (size_t li = 0; li < plan.cascade.size(); ++li) {
    const CascadeLevel& level = plan.cascade[li];
    const std::string where = absl::StrCat("step ", plan.step, ", cascade level ", li, " (blocks [",
                                           level.block_begin, ", ", level.block_end, "))");
    if (level.members.size() < 2) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", level.members.size(),
                                                     " member(s); a level needs at least 2"));
    }
    if (level.block_begin < 0 || level.block_begin >= level.block_end) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": empty or negative block range"));
    }
    ForwardCascadeLevel out;
    out.block_begin = level.block_begin;
    out.block_end = level.block_end;
    const Staged* first = nullptr;
    absl::flat_hash_set<int32_t> members;
    for (uint64_t id : level.members) {
      auto it = index.find(id);
      if (it == index.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": member ", id, " is not scheduled in this step"));
      }
      if (!members.insert(it->second).second) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": member ", id, " listed twice"));
      }
      const Staged& st = staged[it->second];
      if (st.seq->tokens.size() != 1) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": member ", id, " runs ",
                                                       st.seq->tokens.size(),
                                                       " tokens; cascade members decode one"));
      }
      if (level.block_end * bs > st.seq->start_position) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": member ", id, " queries position ", st.seq->start_position,
            ", inside or before the level's last block (its blocks hold positions up to ",
            level.block_end * bs - 1, ")"));
      }
      if (config_.sliding_window > 0 && st.seq->start_position >= config_.sliding_window) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": member ", id, " at position ", st.seq->start_position,
            " with a sliding window of ", config_.sliding_window, " does not see the whole level"));
      }
      if (first == nullptr) {
        first = &st;
      } else {
        for (int32_t b = level.block_begin; b < level.block_end; ++b) {
          if (st.table[b] != first->table[b]) {
            return absl::FailedPreconditionError(absl::StrCat(
                where, ": member ", id, " holds KV block ", st.table[b], " at table index ", b,
                ", member ", first->seq->id, " block ", first->table[b]));
          }
        }
      }
      ranges[it->second].push_back({level.block_begin, level.block_end});
      out.members.push_back(it->second);
    }
    levels.push_back(std::move(out));
  }
  for (auto& [member, list] : ranges) {
    std::sort(list.begin(), list.end());
    int32_t reached = 0;
    for (const auto& [begin, end] : list) {
      if (begin != reached) {
        return absl::InvalidArgumentError(absl::StrCat(
            "step ", plan.step, ": request ", staged[member].seq->id, "'s cascade levels ",
            begin < reached ? "overlap" : "leave a gap", " at block ", std::min(begin, reached)));
      }
      reached = end;
    }
  }
  return absl::OkStatus();
}

void AttentionRunner::Commit(absl::flat_hash_map<uint64_t, RequestState>& fresh,
                             std::vector<Staged>& staged) {
  for (auto& [id, state] : fresh) {
    for (int32_t b : state.block_table) Hold(b);  // its prefix blocks (staged tables: below)
  }
  for (Staged& st : staged) {
    for (int32_t b : st.seq->new_blocks) Hold(b);
    st.state->block_table = std::move(st.table);
    st.state->num_cached += static_cast<int64_t>(st.seq->tokens.size());
  }
  staged.clear();  // its pointers into `fresh` die below
  for (auto& [id, state] : fresh) requests_.emplace(id, std::move(state));
}

absl::StatusOr<StepResult> AttentionRunner::Execute(const StepPlan& plan) {
  DropFinished(plan.finished);
  absl::flat_hash_map<uint64_t, RequestState> fresh;
  Claims claims;
  std::vector<Staged> staged;
  std::vector<ForwardCascadeLevel> levels;
  MM_RETURN_IF_ERROR(StageCopies(plan, claims));
  MM_RETURN_IF_ERROR(StageNewRequests(plan, fresh, claims));
  MM_RETURN_IF_ERROR(StageSequences(plan, fresh, claims, staged));
  MM_RETURN_IF_ERROR(StageCascade(plan, staged, levels));

  std::vector<ForwardSequence> batch;
  batch.reserve(staged.size());
  for (const Staged& st : staged) {
    batch.push_back({st.seq->tokens, st.seq->start_position, st.table, st.seq->sample});
  }
  if (!plan.block_copies.empty()) MM_RETURN_IF_ERROR(forward_->CopyBlocks(plan.block_copies));
  MM_ASSIGN_OR_RETURN(std::vector<float> logits,
                      levels.empty() ? forward_->Run(batch) : forward_->RunCascade(batch, levels));

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
