#include "model/tokenizer/tokenizer.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "model/tokenizer/byte_level.h"
#include "model/tokenizer/split_pattern.h"
#include "model/tokenizer/unicode.h"
#include "model/tokenizer/utf8.h"

namespace moemesh {
namespace {

std::string ToUtf8(std::u32string_view cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t c : cps) utf8::Append(c, out);
  return out;
}

// NFC of valid UTF-8 text.
std::string NfcUtf8(std::string_view text) {
  bool ascii = true;
  for (char c : text) ascii &= static_cast<unsigned char>(c) < 0x80;
  if (ascii) return std::string(text);
  auto cps = utf8::Decode(text);
  MM_CHECK(cps.ok());  // Input was validated by Encode.
  return ToUtf8(unicode::Nfc(*cps));
}

// Cuts each piece at the matches of `pattern`.
std::vector<std::string> SplitPieces(const std::vector<std::string>& pieces, SplitPattern pattern) {
  std::vector<std::string> out;
  std::vector<size_t> offsets;
  for (const std::string& piece : pieces) {
    auto cps = utf8::Decode(piece, &offsets);
    MM_CHECK(cps.ok());
    size_t begin = 0;
    for (size_t end : SplitWithPattern(pattern, *cps)) {
      out.push_back(piece.substr(offsets[begin], offsets[end] - offsets[begin]));
      begin = end;
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open tokenizer file ", path));
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading tokenizer file ", path));
  return FromJson(buf.str(), path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json,
                                                              std::string_view source_name) {
  MM_ASSIGN_OR_RETURN(TokenizerSpec spec, ParseTokenizerJson(json, source_name));
  MM_ASSIGN_OR_RETURN(BpeModel model, BpeModel::Create(spec.bpe, source_name));
  spec.bpe = BpeModelSpec();  // The model holds its own copy.
  std::vector<std::string> normalized;
  for (const AddedToken& t : spec.added_tokens) {
    normalized.push_back(spec.nfc && t.normalized ? NfcUtf8(t.content) : t.content);
    if (!utf8::Decode(t.content).ok()) {
      return absl::InvalidArgumentError(absl::StrCat(std::string(source_name), ": added token ", t.id, " is not valid UTF-8"));
    }
  }
  AddedVocabulary added(spec.added_tokens, std::move(normalized));
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(spec), std::move(model), std::move(added)));
}

Tokenizer::Tokenizer(TokenizerSpec spec, BpeModel model, AddedVocabulary added)
    : spec_(std::move(spec)), model_(std::move(model)), added_(std::move(added)) {
  vocab_size_ = model_.size();
  for (const AddedToken& t : added_.tokens()) vocab_size_ = std::max(vocab_size_, t.id + 1);
  has_token_.assign(vocab_size_, false);
  token_bytes_.resize(vocab_size_);
  for (int32_t id = 0; id < vocab_size_; ++id) {
    std::string_view text = TokenText(id);
    has_token_[id] = !text.empty() || added_.FindById(id) != nullptr;
    token_bytes_[id] = byte_level::DecodeToken(text);
  }
}

std::string_view Tokenizer::TokenText(int32_t id) const {
  if (const AddedToken* t = added_.FindById(id)) return t->content;
  return model_.TokenText(id);
}

std::optional<int32_t> Tokenizer::TokenId(std::string_view token) const {
  if (auto id = added_.FindByContent(token)) return id;
  return model_.TokenId(token);
}

bool Tokenizer::IsSpecial(int32_t id) const {
  const AddedToken* t = added_.FindById(id);
  return t != nullptr && t->special;
}

std::string Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size_) return {};
  return token_bytes_[id];
}

void Tokenizer::EncodePlain(std::string_view text, std::vector<int32_t>& ids) const {
  std::vector<std::string> pieces;
  if (!text.empty()) pieces.emplace_back(text);
  for (const PreTokenizerStep& step : spec_.pre_tokenizer) {
    if (step.kind == PreTokenizerStep::Kind::kSplit) {
      pieces = SplitPieces(pieces, step.pattern);
      continue;
    }
    if (step.add_prefix_space) {
      for (std::string& p : pieces) {
        if (p.empty() || p[0] != ' ') p.insert(p.begin(), ' ');
      }
    }
    if (step.use_regex) pieces = SplitPieces(pieces, SplitPattern::kGpt2);
  }
  for (const std::string& piece : pieces) model_.Tokenize(byte_level::Encode(piece), ids);
}

void Tokenizer::EncodeNormalized(std::string_view text, bool allow_special,
                                 std::vector<int32_t>& ids) const {
  std::string normalized = spec_.nfc ? NfcUtf8(text) : std::string(text);
  for (const TextSegment& seg : added_.Split(normalized, /*normalized=*/true, allow_special)) {
    if (seg.id) {
      ids.push_back(*seg.id);
    } else {
      EncodePlain(std::string_view(normalized).substr(seg.begin, seg.end - seg.begin), ids);
    }
  }
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text, bool add_special_tokens,
                                                       bool allow_special) const {
  MM_RETURN_IF_ERROR(utf8::Decode(text).status());
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  // Tokens with normalized=false are matched in the raw text, the others after normalizing.
  for (const TextSegment& seg : added_.Split(text, /*normalized=*/false, allow_special)) {
    if (seg.id) {
      ids.push_back(*seg.id);
    } else {
      EncodeNormalized(text.substr(seg.begin, seg.end - seg.begin), allow_special, ids);
    }
  }
  if (!add_special_tokens || spec_.single_template.empty()) return ids;
  std::vector<int32_t> out;
  out.reserve(ids.size() + 4);
  for (const TemplatePiece& piece : spec_.single_template) {
    if (piece.is_sequence) {
      out.insert(out.end(), ids.begin(), ids.end());
    } else {
      out.insert(out.end(), piece.ids.begin(), piece.ids.end());
    }
  }
  return out;
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (!IsValidId(id)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "cannot decode token id %d: %s (vocab size %d)", id,
          id < 0 || id >= vocab_size_ ? "out of range" : "no token has this id", vocab_size_));
    }
    if (skip_special_tokens && IsSpecial(id)) continue;
    bytes += token_bytes_[id];
  }
  return utf8::DecodeLossy(bytes);
}

}  // namespace moemesh
