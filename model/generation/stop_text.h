// Turns a stream of token ids into text deltas that are safe to show: complete UTF-8 only,
// never any part of a stop string. Text that could still become the start of a stop string is
// held back until it can't. One per request; not thread-safe.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "model/tokenizer/incremental_detokenizer.h"
#include "model/tokenizer/tokenizer.h"

namespace moemesh {

class StopTextStream {
 public:
  StopTextStream(const Tokenizer& tokenizer, std::vector<std::string> stop_strings,
                 bool skip_special_tokens = true);

  // Feeds one generated token; returns the text that may be shown now.
  std::string Push(int32_t token);
  // Set once a stop string appeared: the string matched. The text before it has been returned;
  // the stop string and anything after it never are.
  const std::optional<std::string>& matched() const { return matched_; }
  // End of generation (any other reason): the held-back text.
  std::string Finish();
  const std::string& text() const { return emitted_; }  // everything returned so far

 private:
  std::string Release(std::string text);
  size_t HeldSuffix(const std::string& pending) const;

  IncrementalDetokenizer detok_;
  std::vector<std::string> stops_;
  std::string pending_;
  std::string emitted_;
  std::optional<std::string> matched_;
};

}  // namespace moemesh
