#include "tokenizer.h"

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/unistr.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <climits>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "error.h"

namespace flash_edge {
namespace {

using json = nlohmann::json;

// tokenizer.json's pipeline that this class implements (what transformers writes for CLIP's tokenizers).
// The library's `\s` is Unicode's White_Space (measured over every code point), which ICU spells out.
const char* const kSplit =
    "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+";
const char* const kIcuSplit =
    "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\p{White_Space}\\p{L}\\p{N}]+";

json expected_normalizer() {
  return {{"type", "Sequence"},
          {"normalizers", json::array({{{"type", "NFC"}},
                                       {{"type", "Replace"}, {"pattern", {{"Regex", "\\s+"}}}, {"content", " "}},
                                       {{"type", "Lowercase"}}})}};
}

json expected_pre_tokenizer() {
  return {{"type", "Sequence"},
          {"pretokenizers",
           json::array({{{"type", "Split"}, {"pattern", {{"Regex", kSplit}}}, {"behavior", "Removed"}, {"invert", true}},
                        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}})}};
}

json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path);
  try {
    return json::parse(in);
  } catch (const json::exception&) {
    throw Error(path + " is not valid JSON");
  }
}

[[noreturn]] void unsupported(const std::string& path, const std::string& what) {
  throw Error(path + ": " + what + ", which is not the CLIP tokenizer this runner implements");
}

int64_t special_id(const json& processor, const char* key, const std::string& path) {
  const json& pair = processor.contains(key) ? processor[key] : json();
  if (!pair.is_array() || pair.size() != 2 || !pair[1].is_number_integer()) unsupported(path, "a post_processor");
  return pair[1].get<int64_t>();
}

}  // namespace

struct ClipTokenizer::Icu {
  const icu::Normalizer2* nfc = nullptr;
  std::unique_ptr<icu::RegexPattern> whitespace, split;
};

ClipTokenizer::~ClipTokenizer() = default;

ClipTokenizer::ClipTokenizer(const std::string& folder) : icu_(std::make_unique<Icu>()) {
  const std::string tj = folder + "/tokenizer.json";
  json tok = read_json(tj);
  if (!tok.is_object() || !tok.contains("model") || !tok["model"].is_object()) unsupported(tj, "no BPE model");
  const json& model = tok["model"];
  if (model.value("type", "") != "BPE" || model.value("end_of_word_suffix", json()) != "</w>" ||
      !(model.value("continuing_subword_prefix", json()).is_null() || model.value("continuing_subword_prefix", json()) == "") || model.value("byte_fallback", false) ||
      !model.value("dropout", json()).is_null())
    unsupported(tj, "a model other than byte-level BPE with '</w>' word ends");
  if (tok.value("normalizer", json()) != expected_normalizer()) unsupported(tj, "its normalizer");
  if (tok.value("pre_tokenizer", json()) != expected_pre_tokenizer()) unsupported(tj, "its pre_tokenizer");

  json vocab = read_json(folder + "/vocab.json");
  if (!vocab.is_object()) throw Error(folder + "/vocab.json is not a JSON object");
  if (model.value("vocab", json()) != vocab)
    throw Error(folder + "/vocab.json and tokenizer.json hold different vocabularies");
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) throw Error(folder + "/vocab.json maps " + it.key() + " to a non-integer");
    vocab_[it.key()] = it.value().get<int64_t>();
  }
  std::ifstream merges(folder + "/merges.txt", std::ios::binary);
  if (!merges) throw Error("cannot read " + folder + "/merges.txt");
  std::string line;
  int rank = 0;
  std::vector<std::string> merge_lines;
  while (std::getline(merges, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (rank == 0 && merge_lines.empty() && line.rfind("#version", 0) == 0)) continue;
    size_t space = line.find(' ');
    if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
      throw Error(folder + "/merges.txt line " + std::to_string(rank + 1) + " is not two symbols");
    ranks_.emplace(line, rank++);
    merge_lines.push_back(line);
  }
  const json& tj_merges = model.value("merges", json::array());
  bool same = tj_merges.size() == merge_lines.size();
  for (size_t i = 0; same && i < merge_lines.size(); ++i) {
    const json& m = tj_merges[i];
    std::string s = m.is_string() ? m.get<std::string>()
                    : (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
                        ? m[0].get<std::string>() + " " + m[1].get<std::string>()
                        : std::string();
    same = s == merge_lines[i];
  }
  if (!same) throw Error(folder + "/merges.txt and tokenizer.json hold different merges");
  const json& unk = model.value("unk_token", json());
  if (unk.is_string() && vocab_.count(unk.get<std::string>())) unk_ = vocab_[unk.get<std::string>()];

  for (const json& a : tok.value("added_tokens", json::array())) {
    if (!a.is_object() || !a.value("content", json()).is_string() || !a.value("id", json()).is_number_integer() ||
        a.value("content", std::string()).empty())
      unsupported(tj, "an added token without content or id");
    if (a.value("normalized", true) || a.value("lstrip", false) || a.value("rstrip", false) ||
        a.value("single_word", false))
      unsupported(tj, "an added token matched after normalisation or with stripping");
    added_.emplace_back(a["content"].get<std::string>(), a["id"].get<int64_t>());
  }
  const json& post = tok.value("post_processor", json());
  if (post.is_object() && post.value("type", "") == "RobertaProcessing") {
    specials_ = {{special_id(post, "cls", tj)}, {special_id(post, "sep", tj)}};
  } else if (post.is_object() && post.value("type", "") == "TemplateProcessing") {
    std::vector<int64_t>* side = &specials_.first;
    for (const json& piece : post.value("single", json::array())) {
      if (piece.contains("Sequence")) {
        side = &specials_.second;
      } else if (piece.contains("SpecialToken")) {
        const json& ids = post["special_tokens"][piece["SpecialToken"]["id"].get<std::string>()]["ids"];
        for (const json& id : ids) side->push_back(id.get<int64_t>());
      }
    }
  } else {
    unsupported(tj, "its post_processor");
  }

  // GPT-2's byte -> unicode table: printable Latin-1 bytes stand for themselves, the rest for 256 + n.
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    UChar32 cp = printable ? b : 256 + extra++;
    icu::UnicodeString(cp).toUTF8String(byte_char_[b]);
  }
  UErrorCode status = U_ZERO_ERROR;
  icu_->nfc = icu::Normalizer2::getNFCInstance(status);
  icu_->whitespace.reset(icu::RegexPattern::compile(UNICODE_STRING_SIMPLE("\\p{White_Space}+"), 0, status));
  icu_->split.reset(icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(kIcuSplit), 0, status));
  if (U_FAILURE(status)) throw Error(std::string("ICU cannot set up the tokenizer: ") + u_errorName(status));
}

std::vector<int64_t> ClipTokenizer::bpe(const std::string& piece) const {
  // symbols: the piece's code points (each one GPT-2 character), "</w>" on the last
  std::vector<std::string> symbols;
  for (size_t i = 0; i < piece.size();) {
    size_t len = 1;
    unsigned char c = static_cast<unsigned char>(piece[i]);
    if (c >= 0xF0) len = 4; else if (c >= 0xE0) len = 3; else if (c >= 0xC0) len = 2;
    symbols.push_back(piece.substr(i, len));
    i += len;
  }
  if (symbols.empty()) return {};
  symbols.back() += "</w>";
  std::vector<bool> known(symbols.size());
  for (size_t i = 0; i < symbols.size(); ++i) known[i] = vocab_.count(symbols[i]) > 0;
  while (symbols.size() > 1) {  // merge the lowest-ranked adjacent pair, every occurrence left to right
    int best = INT_MAX;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      if (!known[i] || !known[i + 1]) continue;
      auto it = ranks_.find(symbols[i] + " " + symbols[i + 1]);
      if (it != ranks_.end()) best = std::min(best, it->second);
    }
    if (best == INT_MAX) break;
    std::vector<std::string> merged;
    std::vector<bool> merged_known;
    for (size_t i = 0; i < symbols.size();) {
      if (i + 1 < symbols.size() && known[i] && known[i + 1]) {
        auto it = ranks_.find(symbols[i] + " " + symbols[i + 1]);
        if (it != ranks_.end() && it->second == best) {
          merged.push_back(symbols[i] + symbols[i + 1]);
          merged_known.push_back(vocab_.count(merged.back()) > 0);
          i += 2;
          continue;
        }
      }
      merged.push_back(symbols[i]);
      merged_known.push_back(known[i]);
      ++i;
    }
    symbols.swap(merged);
    known.swap(merged_known);
  }
  std::vector<int64_t> ids;
  for (size_t i = 0; i < symbols.size(); ++i) {
    if (known[i]) {
      ids.push_back(vocab_.at(symbols[i]));
    } else if (unk_ >= 0) {
      ids.push_back(unk_);
    }
  }
  return ids;
}

std::vector<int64_t> ClipTokenizer::encode(const std::string& utf8) const {
  {  // invalid UTF-8 comes back from ICU with replacement characters
    std::string back;
    icu::UnicodeString::fromUTF8(utf8).toUTF8String(back);
    if (back != utf8) throw Error("the prompt is not valid UTF-8 text");
  }
  std::vector<int64_t> ids;
  auto normal = [&](const std::string& text) {
    if (text.empty()) return;
    UErrorCode status = U_ZERO_ERROR;
    icu::UnicodeString s = icu_->nfc->normalize(icu::UnicodeString::fromUTF8(text), status);
    std::unique_ptr<icu::RegexMatcher> ws(icu_->whitespace->matcher(s, status));
    s = ws->replaceAll(UNICODE_STRING_SIMPLE(" "), status);
    icu::UnicodeString lower;
    for (int32_t i = 0; i < s.length();) {  // per code point, full mapping, no context (as Rust's char::to_lowercase)
      UChar32 cp = s.char32At(i);
      icu::UnicodeString one(cp);
      lower += one.toLower(icu::Locale::getRoot());
      i += U16_LENGTH(cp);
    }
    std::unique_ptr<icu::RegexMatcher> split(icu_->split->matcher(lower, status));
    if (U_FAILURE(status)) throw Error(std::string("ICU failed on the prompt: ") + u_errorName(status));
    while (split->find()) {
      std::string piece_utf8, mapped;
      split->group(status).toUTF8String(piece_utf8);
      for (unsigned char b : piece_utf8) mapped += byte_char_[b];
      std::vector<int64_t> piece = bpe(mapped);
      ids.insert(ids.end(), piece.begin(), piece.end());
    }
  };
  size_t start = 0, pos = 0;
  while (pos < utf8.size()) {  // added tokens in the raw text: leftmost, then longest
    size_t best_len = 0;
    int64_t best_id = 0;
    for (const auto& [content, id] : added_)
      if (content.size() > best_len && utf8.compare(pos, content.size(), content) == 0)
        best_len = content.size(), best_id = id;
    if (best_len) {
      normal(utf8.substr(start, pos - start));
      ids.push_back(best_id);
      pos += best_len;
      start = pos;
    } else {
      ++pos;
    }
  }
  normal(utf8.substr(start));
  return ids;
}

std::vector<int64_t> fit_to_rules(std::vector<int64_t> ids, const TokenizerRules& rules,
                                  const std::vector<int64_t>& prefix, const std::vector<int64_t>& suffix) {
  size_t room = static_cast<size_t>(rules.max_length) - prefix.size() - suffix.size();
  if (ids.size() > room) ids.resize(room);  // truncation: keep_first
  std::vector<int64_t> out(prefix);
  out.insert(out.end(), ids.begin(), ids.end());
  out.insert(out.end(), suffix.begin(), suffix.end());
  out.resize(static_cast<size_t>(rules.max_length), rules.pad_id);  // padding: right
  for (int64_t id : out)
    if (id < 0 || id >= rules.vocab_size)
      throw Error("the tokenizer gave id " + std::to_string(id) + ", past the manifest's vocab_size " +
                  std::to_string(rules.vocab_size) + ": the tokenizer does not belong to this text encoder");
  return out;
}

}  // namespace flash_edge
