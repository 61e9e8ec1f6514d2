#include "worker/expert/moe_dispatcher.h"

#include <algorithm>
#include <future>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moemesh {
namespace {

// One client's share of a batch.
struct SubBatch {
  std::vector<int32_t> tokens;  // indices into the full batch, ascending
  std::vector<float> hidden_states;
  std::vector<int32_t> expert_ids;
  std::vector<float> expert_weights;
  std::vector<float> out;
  absl::Status status;
};

absl::Status CheckSize(const char* field, size_t actual, int64_t expected, const char* shape) {
  if (static_cast<int64_t>(actual) != expected) {
    return absl::InvalidArgumentError(absl::StrCat("batch ", field, " has ", actual,
                                                   " values, expected ", expected, " (", shape, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<MoeDispatcher>> MoeDispatcher::Create(
    std::vector<std::vector<std::vector<int>>> owners, std::vector<ExpertClient*> clients) {
  for (size_t c = 0; c < clients.size(); ++c) {
    if (clients[c] == nullptr) return absl::InvalidArgumentError(absl::StrCat("client ", c, " is null"));
  }
  for (size_t l = 0; l < owners.size(); ++l) {
    for (size_t e = 0; e < owners[l].size(); ++e) {
      for (int c : owners[l][e]) {
        if (c < 0 || c >= static_cast<int>(clients.size())) {
          return absl::InvalidArgumentError(absl::StrCat("owner of layer ", l, " expert ", e, " is client ",
                                                         c, ", outside [0, ", clients.size(), ")"));
        }
      }
    }
  }
  return std::unique_ptr<MoeDispatcher>(new MoeDispatcher(std::move(owners), std::move(clients)));
}

absl::Status MoeDispatcher::Run(const ExpertBatch& b, absl::Span<float> out) {
  if (b.layer < 0 || b.layer >= static_cast<int>(owners_.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch layer ", b.layer, " is outside [0, ", owners_.size(), ")"));
  }
  if (b.num_tokens < 0 || b.hidden <= 0 || b.top_k <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("batch num_tokens ", b.num_tokens, ", hidden ",
                                                   b.hidden, ", top_k ", b.top_k,
                                                   ": expected >= 0, > 0, > 0"));
  }
  const int64_t k = b.top_k;
  const int64_t h = b.hidden;
  const int64_t n_routes = static_cast<int64_t>(b.num_tokens) * k;
  MM_RETURN_IF_ERROR(CheckSize("hidden_states", b.hidden_states.size(), b.num_tokens * h, "num_tokens * hidden"));
  MM_RETURN_IF_ERROR(CheckSize("expert_ids", b.expert_ids.size(), n_routes, "num_tokens * top_k"));
  MM_RETURN_IF_ERROR(CheckSize("expert_weights", b.expert_weights.size(), n_routes, "num_tokens * top_k"));
  MM_RETURN_IF_ERROR(CheckSize("out", out.size(), b.num_tokens * h, "num_tokens * hidden"));

  // Split: each route goes to one owner; each client gets the tokens it serves.
  const std::vector<std::vector<int>>& owners = owners_[b.layer];
  std::vector<SubBatch> subs(clients_.size());
  for (int64_t t = 0; t < b.num_tokens; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = b.expert_ids[t * k + j];
      if (e == -1) continue;
      if (e < -1 || e >= static_cast<int32_t>(owners.size())) {
        return absl::InvalidArgumentError(
            absl::StrCat("batch expert_ids[", t * k + j, "] (token ", t, ") is ", e,
                         ", expected -1 or within [0, ", owners.size(), ") for layer ", b.layer));
      }
      const std::vector<int>& replicas = owners[e];
      if (replicas.empty()) {
        return absl::FailedPreconditionError(
            absl::StrCat("layer ", b.layer, " expert ", e, " has no expert worker holding it"));
      }
      SubBatch& s = subs[replicas[t % replicas.size()]];
      if (s.tokens.empty() || s.tokens.back() != t) {
        s.tokens.push_back(static_cast<int32_t>(t));
        const float* x = b.hidden_states.data() + t * h;
        s.hidden_states.insert(s.hidden_states.end(), x, x + h);
        s.expert_ids.insert(s.expert_ids.end(), k, -1);
        s.expert_weights.insert(s.expert_weights.end(), k, 0.0f);
      }
      const size_t row = (s.tokens.size() - 1) * k;
      s.expert_ids[row + j] = e;
      s.expert_weights[row + j] = b.expert_weights[t * k + j];
    }
  }

  // Call every client with work concurrently; the caller runs the last one itself.
  auto call = [&](size_t c) {
    SubBatch& s = subs[c];
    ExpertBatch sub;
    sub.layer = b.layer;
    sub.num_tokens = static_cast<int32_t>(s.tokens.size());
    sub.hidden = b.hidden;
    sub.top_k = b.top_k;
    sub.hidden_states = s.hidden_states;
    sub.expert_ids = s.expert_ids;
    sub.expert_weights = s.expert_weights;
    s.out.assign(s.hidden_states.size(), 0.0f);
    s.status = clients_[c]->Run(sub, absl::MakeSpan(s.out));
  };
  std::vector<size_t> active;
  for (size_t c = 0; c < subs.size(); ++c) {
    if (!subs[c].tokens.empty()) active.push_back(c);
  }
  std::vector<std::future<void>> pending;
  for (size_t i = 0; i + 1 < active.size(); ++i) {
    try {
      pending.push_back(std::async(std::launch::async, call, active[i]));
    } catch (const std::system_error&) {  // no thread to be had: run it here
      call(active[i]);
    }
  }
  if (!active.empty()) call(active.back());
  for (std::future<void>& f : pending) f.wait();

  for (size_t c : active) {
    if (!subs[c].status.ok()) {
      return absl::Status(subs[c].status.code(),
                          absl::StrCat("expert client ", c, ": ", subs[c].status.message()));
    }
  }
  std::fill(out.begin(), out.end(), 0.0f);
  for (size_t c : active) {  // client-index order
    const SubBatch& s = subs[c];
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      float* o = out.data() + static_cast<int64_t>(s.tokens[i]) * h;
      const float* p = s.out.data() + i * h;
      for (int64_t d = 0; d < h; ++d) o[d] += p[d];
    }
  }
  return absl::OkStatus();
}

}  // namespace moemesh
