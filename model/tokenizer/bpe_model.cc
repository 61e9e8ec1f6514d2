#include "model/tokenizer/bpe_model.h"

#include <queue>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "model/tokenizer/utf8.h"

namespace moemesh {

absl::StatusOr<BpeModel> BpeModel::Create(const BpeModelSpec& spec, std::string_view source) {
  BpeModel model;
  model.ignore_merges_ = spec.ignore_merges;
  model.token_to_id_.reserve(spec.vocab.size());
  int32_t max_id = -1;
  for (const auto& [token, id] : spec.vocab) {
    if (id < 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: model.vocab[\"%s\"] has id %d; ids must be >= 0", source, token, id));
    }
    model.token_to_id_[token] = id;
    max_id = std::max(max_id, id);
  }
  model.id_to_token_.resize(static_cast<size_t>(max_id + 1));
  for (const auto& [token, id] : spec.vocab) model.id_to_token_[id] = token;

  model.merges_.reserve(spec.merges.size());
  for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
    const auto& [a, b] = spec.merges[rank];
    auto a_id = model.TokenId(a);
    auto b_id = model.TokenId(b);
    auto new_id = model.TokenId(a + b);
    if (!a_id || !b_id || !new_id) {
      const std::string& missing = !a_id ? a : !b_id ? b : a + b;
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: model.merges[%d] (\"%s\", \"%s\") uses token \"%s\" that is not in model.vocab",
          source, rank, a, b, missing));
    }
    // A repeated pair keeps its last rank, as HF's map construction does.
    model.merges_[PairKey(*a_id, *b_id)] = Merge{static_cast<int32_t>(rank), *new_id};
  }
  return model;
}

std::optional<int32_t> BpeModel::TokenId(std::string_view token) const {
  auto it = token_to_id_.find(absl::string_view(token.data(), token.size()));
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

std::string_view BpeModel::TokenText(int32_t id) const {
  if (id < 0 || id >= size()) return {};
  return id_to_token_[id];
}

const BpeModel::Merge* BpeModel::FindMerge(int32_t a, int32_t b) const {
  auto it = merges_.find(PairKey(a, b));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>& ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto id = TokenId(word)) {
      ids.push_back(*id);
      return;
    }
  }
  // Symbols form a doubly linked list; a removed symbol has id -1.
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (size_t pos = 0; pos < word.size();) {
    char32_t cp = 0;
    size_t n = utf8::ValidSequenceLength(word, pos, &cp);
    if (n == 0) n = 1;  // Cannot happen for text from byte_level::Encode.
    if (auto id = TokenId(word.substr(pos, n))) {
      int32_t index = static_cast<int32_t>(symbols.size());
      symbols.push_back(Symbol{*id, index - 1, index + 1});
    }
    pos += n;
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  // Candidate merges ordered by (rank, position), lowest first. An entry is stale when the
  // pair at its position no longer produces the same token (same check as HF's Word).
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto push_pair = [&](int32_t pos) {
    if (pos < 0 || symbols[pos].next < 0) return;
    if (const Merge* m = FindMerge(symbols[pos].id, symbols[symbols[pos].next].id)) {
      queue.push(Candidate{m->rank, pos, m->new_id});
    }
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push_pair(i);

  while (!queue.empty()) {
    Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.id < 0 || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const Merge* m = FindMerge(left.id, right.id);
    if (m == nullptr || m->new_id != top.new_id) continue;
    left.id = top.new_id;
    left.next = right.next;
    right.id = -1;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    push_pair(left.prev);
    push_pair(top.pos);
  }
  for (const Symbol& s : symbols) {
    if (s.id >= 0) ids.push_back(s.id);
  }
}

}  // namespace moemesh
