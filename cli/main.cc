// The moemesh executable: one binary, one subcommand per role. Flags live here only.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "cli/run_command.h"

namespace {
constexpr float kUnset = std::numeric_limits<float>::quiet_NaN();
}  // namespace

ABSL_FLAG(std::string, model, "", "Hugging Face model directory (config.json, *.safetensors, tokenizer.json)");
ABSL_FLAG(std::string, prompt, "", "prompt text");
ABSL_FLAG(int32_t, max_tokens, 0, "most tokens to generate (0: until the context is full or a stop)");
ABSL_FLAG(float, temperature, kUnset, "sampling temperature; 0 is greedy (default: generation_config.json, else 1)");
ABSL_FLAG(int32_t, top_k, -1, "keep the k most likely tokens (0 or -1: off)");
ABSL_FLAG(float, top_p, kUnset, "nucleus sampling mass in (0, 1]");
ABSL_FLAG(float, min_p, kUnset, "drop tokens below min_p times the top probability, in [0, 1]");
ABSL_FLAG(float, repetition_penalty, kUnset, "penalty > 0 on tokens of the prompt and output (1: off)");
ABSL_FLAG(float, presence_penalty, kUnset, "penalty in [-2, 2] on tokens already generated");
ABSL_FLAG(float, frequency_penalty, kUnset, "penalty in [-2, 2] per repetition of a generated token");
ABSL_FLAG(int64_t, seed, -1, "sampling seed (-1: none); the same seed gives the same tokens");
ABSL_FLAG(std::vector<std::string>, stop, {}, "stop strings, comma-separated");
ABSL_FLAG(std::vector<std::string>, stop_token_ids, {}, "stop token ids, comma-separated");
ABSL_FLAG(int32_t, logprobs, -1, "print each token's logprob and the top-n alternatives (-1: off)");
ABSL_FLAG(bool, ignore_eos, false, "keep generating past end-of-sequence tokens");
ABSL_FLAG(bool, progress, true, "show a progress bar while weights load");

namespace {

const char kUsage[] =
    "moemesh: distributed inference for Mixture-of-Experts models\n"
    "\n"
    "usage: moemesh <command> [flags]\n"
    "\n"
    "commands:\n"
    "  run   generate from a prompt in one process with the reference engine:\n"
    "        moemesh run --model DIR --prompt TEXT [--max_tokens N] [--temperature T]\n"
    "        [--top_k K] [--top_p P] [--min_p P] [--repetition_penalty R]\n"
    "        [--presence_penalty P] [--frequency_penalty F] [--seed S] [--stop A,B]\n"
    "        [--stop_token_ids 1,2] [--logprobs N] [--ignore_eos]\n"
    "\n"
    "Run 'moemesh run --helpfull' for every flag.";

bool Set(float v) { return !std::isnan(v); }

int Run() {
  moemesh::RunConfig cfg;
  cfg.model_dir = absl::GetFlag(FLAGS_model);
  cfg.prompt = absl::GetFlag(FLAGS_prompt);
  if (cfg.model_dir.empty()) {
    std::fprintf(stderr, "moemesh run: --model is required (a Hugging Face model directory)\n");
    return 2;
  }
  moemesh::GenerationParams& p = cfg.params;
  moemesh::SamplingParams& s = p.sampling;
  if (absl::GetFlag(FLAGS_max_tokens) != 0) p.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  auto take = [&](float v, float& dst) {
    if (Set(v)) {
      dst = v;
      cfg.sampling_overridden = true;
    }
  };
  take(absl::GetFlag(FLAGS_temperature), s.temperature);
  take(absl::GetFlag(FLAGS_top_p), s.top_p);
  take(absl::GetFlag(FLAGS_min_p), s.min_p);
  take(absl::GetFlag(FLAGS_repetition_penalty), s.repetition_penalty);
  take(absl::GetFlag(FLAGS_presence_penalty), s.presence_penalty);
  take(absl::GetFlag(FLAGS_frequency_penalty), s.frequency_penalty);
  if (absl::GetFlag(FLAGS_top_k) >= 0) {
    s.top_k = absl::GetFlag(FLAGS_top_k);
    cfg.sampling_overridden = true;
  }
  if (absl::GetFlag(FLAGS_seed) >= 0) s.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
  s.logprobs = absl::GetFlag(FLAGS_logprobs);
  p.stop_strings = absl::GetFlag(FLAGS_stop);
  for (const std::string& id : absl::GetFlag(FLAGS_stop_token_ids)) {
    char* end = nullptr;
    const long v = std::strtol(id.c_str(), &end, 10);
    if (id.empty() || *end != '\0') {
      std::fprintf(stderr, "moemesh run: --stop_token_ids entry \"%s\" is not an integer\n", id.c_str());
      return 2;
    }
    p.stop_token_ids.push_back(static_cast<int32_t>(v));
  }
  p.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  cfg.show_progress = absl::GetFlag(FLAGS_progress);
  return moemesh::RunCommand(cfg);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    std::fprintf(stderr, "%s\n", kUsage);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  // Parse the flags after the subcommand (argv[1] is dropped).
  std::vector<char*> args = {argv[0]};
  for (int i = 2; i < argc; ++i) args.push_back(argv[i]);
  std::vector<char*> rest = absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (rest.size() > 1) {
    std::fprintf(stderr, "moemesh %s: unexpected argument \"%s\"\n", command.c_str(), rest[1]);
    return 2;
  }
  if (command == "run") return Run();
  std::fprintf(stderr, "moemesh: unknown command \"%s\"\n\n%s\n", command.c_str(), kUsage);
  return 2;
}
