// CLIP's byte-level BPE, from a bundle tokenizer folder's vocab.json and merges.txt, giving the ids the Hugging
// Face `tokenizers` library gives for the folder's tokenizer.json (README "App contract", step 2):
//   added tokens (tokenizer.json's `added_tokens`, matched in the raw prompt, leftmost then longest) map to their
//   ids; the text between them is NFC-normalised, each run of White_Space becomes one space, each code point is
//   lower-cased (full mapping, no context), split by CLIP's regex, mapped byte by byte through GPT-2's
//   byte-to-unicode table and merged by merges.txt rank, with "</w>" on each piece's last symbol.
// tokenizer.json is read for its added tokens and to check that its pipeline is this one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "manifest.h"

namespace flash_edge {

class ClipTokenizer {
 public:
  explicit ClipTokenizer(const std::string& folder);
  ~ClipTokenizer();

  // The prompt's ids, without special tokens, truncation or padding. Throws Error on invalid UTF-8.
  std::vector<int64_t> encode(const std::string& utf8) const;

  // The ids tokenizer.json's post-processor puts before and after a prompt (format 1 bundles).
  const std::pair<std::vector<int64_t>, std::vector<int64_t>>& post_processor_specials() const { return specials_; }

 private:
  std::vector<int64_t> bpe(const std::string& piece) const;

  std::unordered_map<std::string, int64_t> vocab_;
  std::unordered_map<std::string, int> ranks_;  // "left right" -> merge rank
  std::vector<std::pair<std::string, int64_t>> added_;  // raw text -> id
  std::pair<std::vector<int64_t>, std::vector<int64_t>> specials_;
  int64_t unk_ = -1;
  std::string byte_char_[256];  // GPT-2's byte -> printable code point, as UTF-8
  struct Icu;
  std::unique_ptr<Icu> icu_;
};

// The manifest's rules (truncation: keep_first, padding: right) around the prompt's ids: int64 [max_length].
std::vector<int64_t> fit_to_rules(std::vector<int64_t> ids, const TokenizerRules& rules,
                                  const std::vector<int64_t>& prefix, const std::vector<int64_t>& suffix);

}  // namespace flash_edge
