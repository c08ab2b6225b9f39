// flash-edge-run: a bundle -> PNG with no Python (ExecuTorch's C++ runtime), and the checks an app port needs.
//
//   flash-edge-run --bundle B --prompt P --seed S --out x.png [--no-verify] [--memory fast|low|stream]
//                  [--weight-cache DIR] [--repeat N] [--stats F.json]
//   flash-edge-run --bundle B --tokenize < prompts.jsonl     (one JSON string per line -> one JSON object per line)
//   flash-edge-run --noise SEED STREAM COUNT                 (the float32 bit patterns, in hex, one per line)
//
// Errors are one line on stderr and exit status 2.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../src/error.h"
#include "../src/noise.h"
#include "../src/png_writer.h"
#include "../src/runner.h"

namespace {

using flash_edge::Error;

const char* const kUsage =
    "usage: flash-edge-run --bundle DIR --prompt TEXT --out FILE.png [--seed S (0..2^64-1)] [--no-verify]\n"
    "                      [--memory fast|low|stream (default low)] [--weight-cache DIR] [--repeat N (1..100)]\n"
    "                      [--stats FILE.json]\n"
    "       flash-edge-run --bundle DIR --tokenize  < one JSON string per line\n"
    "       flash-edge-run --noise SEED STREAM COUNT\n";

uint64_t parse_u64(const std::string& s, const std::string& what) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos)
    throw Error(what + " must be an integer from 0 to 2^64 - 1, got '" + s.substr(0, 40) + "'");
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), nullptr, 10);
  if (errno == ERANGE) throw Error(what + " must be an integer from 0 to 2^64 - 1, got " + s.substr(0, 40));
  return v;
}

int run(int argc, char** argv) {
  std::map<std::string, std::string> opts;
  std::vector<std::string> noise_args;
  bool verify = true, tokenize = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    } else if (a == "--no-verify") {
      verify = false;
    } else if (a == "--tokenize") {
      tokenize = true;
    } else if (a == "--noise") {
      for (int k = 0; k < 3; ++k, ++i)
        if (i + 1 < argc) noise_args.push_back(argv[i + 1]);
      if (noise_args.size() != 3) throw Error("--noise takes SEED STREAM COUNT");
    } else if ((a == "--bundle" || a == "--prompt" || a == "--seed" || a == "--out" || a == "--stats" ||
                a == "--memory" || a == "--weight-cache" || a == "--repeat") && i + 1 < argc) {
      opts[a] = argv[++i];
    } else {
      throw Error("unknown or incomplete argument '" + a.substr(0, 40) + "' (see --help)");
    }
  }
  if (!noise_args.empty()) {
    uint64_t count = parse_u64(noise_args[2], "COUNT");
    if (count > (1u << 28)) throw Error("COUNT must be at most 2^28");
    std::vector<float> v(count);
    flash_edge::gaussian_noise(parse_u64(noise_args[0], "SEED"), parse_u64(noise_args[1], "STREAM"), v.data(), count);
    for (float x : v) {
      uint32_t bits;
      std::memcpy(&bits, &x, 4);
      std::printf("%08x\n", bits);
    }
    return 0;
  }
  if (!opts.count("--bundle")) throw Error("--bundle is required (see --help)");
  const std::string out = opts.count("--out") ? opts["--out"] : "";
  uint64_t seed = opts.count("--seed") ? parse_u64(opts["--seed"], "--seed") : 0;
  if (!tokenize) {  // arguments are checked before anything is loaded
    if (!opts.count("--prompt") || out.empty()) throw Error("--prompt and --out are required (see --help)");
    if (out.size() < 4 || out.compare(out.size() - 4, 4, ".png") != 0)
      throw Error("--out must name a .png file, got " + out);
  }
  uint64_t repeat = opts.count("--repeat") ? parse_u64(opts["--repeat"], "--repeat") : 1;
  if (repeat < 1 || repeat > 100) throw Error("--repeat must be from 1 to 100");
  flash_edge::RunnerOptions options;
  options.verify_hashes = verify;
  options.memory = flash_edge::parse_memory(opts.count("--memory") ? opts["--memory"] : "low");
  options.weight_cache_dir = opts.count("--weight-cache") ? opts["--weight-cache"] : "";
  flash_edge::Runner runner(opts["--bundle"], options);
  if (tokenize) {
    for (std::string line; std::getline(std::cin, line);) {
      std::string prompt = nlohmann::json::parse(line).get<std::string>();
      nlohmann::json ids;
      for (const auto& [component, rules] : runner.manifest().tokenizers) ids[component] = runner.tokenize(component, prompt);
      std::cout << ids.dump() << "\n";
    }
    return 0;
  }
  // --repeat: the same generation again in this process (what `fast` keeps loaded, or the weight cache, shows from
  // the second run on); every run must draw the same image
  nlohmann::json stats;
  flash_edge::Image image;
  for (uint64_t run = 0; run < repeat; ++run) {
    flash_edge::Image drawn = runner.generate(opts["--prompt"], seed);
    if (run > 0 && drawn.rgb != image.rgb) throw Error("run " + std::to_string(run + 1) + " drew another image");
    image = std::move(drawn);
    nlohmann::json one;
    double total = 0;
    for (const char* stage : {"encode", "denoise", "decode"}) {
      const flash_edge::StageStats& s = runner.stages().at(stage);
      one["stages"][stage] = {{"seconds", s.seconds}, {"peak_rss", s.peak_rss}};
      total += s.seconds;
      std::fprintf(stderr, "%-8s %7.2f s  peak %6.2f GB\n", stage, s.seconds, s.peak_rss / 1e9);
    }
    one["seconds"] = total;
    std::fprintf(stderr, "run %d: %.2f s\n", static_cast<int>(run + 1), total);
    stats["runs"].push_back(one);
  }
  stats["stages"] = stats["runs"].back()["stages"];  // the last run's
  stats["seconds"] = stats["runs"].back()["seconds"];
  flash_edge::write_png(image, out, {{"prompt", opts["--prompt"]}, {"seed", std::to_string(seed)},
                                     {"software", "flash-edge-run"}});
  std::fprintf(stderr, "wrote %s (%dx%d)\n", out.c_str(), image.width, image.height);
  if (opts.count("--stats")) {
    FILE* f = std::fopen(opts["--stats"].c_str(), "w");
    if (!f) throw Error("cannot write " + opts["--stats"]);
    std::fputs((stats.dump(2) + "\n").c_str(), f);
    std::fclose(f);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::string message = e.what();
    std::replace(message.begin(), message.end(), '\n', ' ');  // always one line
    std::fprintf(stderr, "flash-edge-run: error: %s\n", message.c_str());
    return 2;
  }
}
