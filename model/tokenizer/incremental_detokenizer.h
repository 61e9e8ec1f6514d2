// Streaming detokenization: ids arrive one at a time and only complete, valid UTF-8 text
// comes out; the bytes of a character that is not complete yet are held back, and bytes that
// can never become valid give U+FFFD exactly as Tokenizer::Decode would. Stop-string
// handling does not belong here. Not thread-safe: one instance per request.
#pragma once

#include <cstdint>
#include <string>

#include "model/tokenizer/tokenizer.h"

namespace moemesh {

class IncrementalDetokenizer {
 public:
  // `tok` must outlive this object.
  IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens);

  // Returns the newly completed text. Ids the tokenizer does not know add nothing.
  std::string Push(int32_t id);
  // End of stream: what is held back, lossy-decoded.
  std::string Flush();
  // All text emitted so far.
  const std::string& text() const { return text_; }

 private:
  const Tokenizer& tok_;
  bool skip_special_tokens_;
  std::string pending_;  // Bytes of an incomplete character (at most 3).
  std::string text_;
};

}  // namespace moemesh
