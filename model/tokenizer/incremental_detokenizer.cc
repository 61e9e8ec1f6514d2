#include "model/tokenizer/incremental_detokenizer.h"

#include "model/tokenizer/utf8.h"

namespace moemesh {

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(tok), skip_special_tokens_(skip_special_tokens) {}

std::string IncrementalDetokenizer::Push(int32_t id) {
  if (!tok_.IsValidId(id) || (skip_special_tokens_ && tok_.IsSpecial(id))) return {};
  pending_ += tok_.TokenBytes(id);
  // Lossy decoding is local: everything before a trailing incomplete character decodes the
  // same whatever bytes follow, so it can be emitted now.
  size_t hold = utf8::IncompleteTailLength(pending_);
  std::string out = utf8::DecodeLossy(std::string_view(pending_).substr(0, pending_.size() - hold));
  pending_.erase(0, pending_.size() - hold);
  text_ += out;
  return out;
}

std::string IncrementalDetokenizer::Flush() {
  std::string out = utf8::DecodeLossy(pending_);
  pending_.clear();
  text_ += out;
  return out;
}

}  // namespace moemesh
