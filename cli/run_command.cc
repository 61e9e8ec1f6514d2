#include "cli/run_command.h"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/progress.h"
#include "common/status.h"
#include "model/arch/model_config.h"
#include "model/reference/reference_engine.h"
#include "model/reference/reference_model.h"
#include "model/tokenizer/tokenizer.h"

namespace moemesh {
namespace {

void ApplyDefaults(const GenerationDefaults& d, GenerationParams& p) {
  if (d.temperature) p.sampling.temperature = *d.temperature;
  if (d.top_p) p.sampling.top_p = *d.top_p;
  if (d.top_k) p.sampling.top_k = *d.top_k;
  if (d.repetition_penalty) p.sampling.repetition_penalty = *d.repetition_penalty;
}

absl::Status Run(const RunConfig& cfg) {
  using Clock = std::chrono::steady_clock;
  const auto t_load = Clock::now();
  if (!std::filesystem::is_directory(cfg.model_dir)) {
    return absl::NotFoundError(absl::StrCat("model directory \"", cfg.model_dir, "\" does not exist"));
  }
  MM_RETURN_IF_ERROR(cfg.params.sampling.Validate());
  const std::string tok_path = (std::filesystem::path(cfg.model_dir) / "tokenizer.json").string();
  MM_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::FromFile(tok_path));
  MM_ASSIGN_OR_RETURN(GenerationDefaults defaults, LoadGenerationDefaults(cfg.model_dir));
  LoadOptions load;
  load.show_progress = cfg.show_progress;
  MM_ASSIGN_OR_RETURN(std::unique_ptr<ReferenceModel> model, ReferenceModel::Load(cfg.model_dir, load));
  const double load_s = std::chrono::duration<double>(Clock::now() - t_load).count();
  std::fprintf(stderr, "%s\nloaded %s of fp32 weights in %.2f s\n", model->config().Summary().c_str(),
               FormatBytes(model->weight_bytes()).c_str(), load_s);

  MM_ASSIGN_OR_RETURN(std::vector<int32_t> prompt, tokenizer->Encode(cfg.prompt));
  GenerationParams params = cfg.params;
  if (!cfg.sampling_overridden) ApplyDefaults(defaults, params);
  ReferenceEngine engine(*model, tokenizer.get(), defaults.eos_token_ids);
  MM_ASSIGN_OR_RETURN(uint64_t id, engine.Add(prompt, params));
  (void)id;

  std::fputs(cfg.prompt.c_str(), stdout);
  std::fflush(stdout);
  const auto t0 = Clock::now();
  Clock::time_point t_first;
  int generated = 0;
  StepOutput last;
  std::vector<StepOutput> per_token;
  while (engine.HasWork()) {
    MM_ASSIGN_OR_RETURN(std::vector<StepOutput> outs, engine.Step());
    for (StepOutput& o : outs) {
      if (o.token >= 0 && generated++ == 0) t_first = Clock::now();
      std::fputs(o.text.c_str(), stdout);
      std::fflush(stdout);
      if (params.sampling.logprobs >= 0 && o.token >= 0) per_token.push_back(o);
      last = std::move(o);
    }
  }
  const auto t1 = Clock::now();
  std::fputs("\n", stdout);
  auto show = [&](int32_t token) {
    auto text = tokenizer->Decode(std::vector<int32_t>{token});
    return absl::StrFormat("%d %s", token, text.ok() ? absl::StrCat("\"", absl::CEscape(*text), "\"") : "?");
  };
  for (const StepOutput& o : per_token) {
    std::string alts;
    for (const TokenLogprob& t : o.top_logprobs) alts += absl::StrFormat("  %s %.4f", show(t.token), t.logprob);
    std::fprintf(stderr, "token %-16s logprob %8.4f%s%s\n", show(o.token).c_str(), o.logprob,
                 alts.empty() ? "" : "  | top", alts.c_str());
  }
  const double total_s = std::chrono::duration<double>(t1 - t0).count();
  const double ttft_s = generated > 0 ? std::chrono::duration<double>(t_first - t0).count() : 0.0;
  const double decode_s = total_s - ttft_s;
  std::fprintf(stderr,
               "finish: %s%s | prompt %zu tokens, generated %d tokens | time to first token %.3f s | "
               "%.1f tokens/s (%.1f tokens/s after the first)\n",
               std::string(FinishReasonName(last.finish)).c_str(),
               last.matched_stop.empty() ? "" : absl::StrFormat(" (\"%s\")", last.matched_stop).c_str(),
               prompt.size(), generated, ttft_s, total_s > 0 ? generated / total_s : 0.0,
               decode_s > 0 && generated > 1 ? (generated - 1) / decode_s : 0.0);
  return absl::OkStatus();
}

}  // namespace

int RunCommand(const RunConfig& config) {
  absl::Status s = Run(config);
  if (!s.ok()) {
    std::fprintf(stderr, "moemesh run: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace moemesh
