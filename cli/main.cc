// The moemesh executable: one binary, one subcommand per role. Flags live here only.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "cli/generate_command.h"
#include "cli/run_command.h"
#include "cli/serve_command.h"
#include "coordinator/cascade_planner.h"
#include "coordinator/server/coordinator_runner.h"
#include "worker/expert/expert_format.h"
#include "worker/process/worker_processes.h"

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

// Cluster flags.
ABSL_FLAG(std::string, listen, "127.0.0.1:0", "address this process serves on (port 0: the OS chooses)");
ABSL_FLAG(std::string, port_file, "", "write the chosen port to this file once serving");
ABSL_FLAG(std::string, coordinator, "", "workers: the coordinator's host:port");
ABSL_FLAG(std::string, name, "", "workers: a name for logs");
ABSL_FLAG(int64_t, memory_limit, 0, "expert workers: bytes of DRAM offered for experts (0: the host's)");
ABSL_FLAG(int64_t, expert_memory_limit, 0, "serve: --memory_limit of each expert worker");
ABSL_FLAG(int32_t, threads, 0, "expert workers: compute threads (0: the host's cores)");
ABSL_FLAG(int64_t, amx_threshold, 0,
          "expert workers (and serve's): tokens per expert from which the AMX path runs "
          "(0: measured at load for the weight format)");
ABSL_FLAG(int32_t, tp, 1, "tensor-parallel size: attention workers");
ABSL_FLAG(int32_t, expert_workers, 1, "expert workers");
ABSL_FLAG(int32_t, expert_replicas, 1, "expert workers holding each routed expert");
ABSL_FLAG(int32_t, expert_threads, 0, "compute threads per expert worker (0: its cores)");
ABSL_FLAG(std::string, expert_format, "bf16",
          "routed experts' weight format in the expert workers: bf16, int8-g32, int8-g128, int4-g32, "
          "int4-g128, or fp32 (the reference pool, for checking)");
ABSL_FLAG(int32_t, kv_blocks, 0,
          "KV cache blocks per attention rank (0: GPU ranks fill 90% of free device memory, CPU "
          "ranks take 2048)");
ABSL_FLAG(std::vector<std::string>, gpus, {},
          "serve: CUDA devices of the attention ranks, one per rank, e.g. 0,1 (empty: CPU ranks)");
ABSL_FLAG(int32_t, gpu, -1, "attention workers: CUDA device to run on (-1: the CPU)");
ABSL_FLAG(bool, cuda_graphs, true, "attention workers on a GPU: replay decode steps as CUDA graphs");
ABSL_FLAG(int32_t, block_size, 16, "tokens per KV block");
ABSL_FLAG(int32_t, max_running, 64, "requests decoding at once");
ABSL_FLAG(int32_t, max_waiting, 256, "admission queue bound (RESOURCE_EXHAUSTED beyond)");
ABSL_FLAG(int32_t, max_step_tokens, 2048, "tokens per step (prefill chunks and decodes)");
ABSL_FLAG(int32_t, context_length, 0, "context length (0: the model's)");
ABSL_FLAG(bool, prefix_caching, true, "reuse the KV blocks of cached prompt prefixes");
ABSL_FLAG(std::string, cascade, "auto",
          "cascade decoding of shared prefixes: auto (per step from the cost model, whose "
          "constants come from --cascade_calibration or, on GPU attention ranks, are measured "
          "at start-up; else flat), on, off");
ABSL_FLAG(std::string, cascade_calibration, "", "cascade cost model constants (a JSON file)");
ABSL_FLAG(int32_t, worker_timeout_s, 300, "coordinator: seconds to wait for workers to register");
ABSL_FLAG(std::string, host, "127.0.0.1", "serve: the address every process binds to");
ABSL_FLAG(int32_t, port, 0, "serve: the public port (0: the OS chooses)");
ABSL_FLAG(std::string, server, "127.0.0.1:50051", "generate: the coordinator's host:port");
ABSL_FLAG(double, timeout_s, 0, "generate: deadline in seconds (0: none)");
ABSL_FLAG(std::vector<std::string>, token_ids, {}, "generate: prompt as token ids instead of --prompt");

namespace {

const char kUsage[] =
    "moemesh: distributed inference for Mixture-of-Experts models\n"
    "\n"
    "usage: moemesh <command> [flags]\n"
    "\n"
    "commands:\n"
    "  serve             a local cluster on loopback: coordinator + workers as child processes\n"
    "                    moemesh serve --model DIR [--tp N] [--expert_workers M] [--port P]\n"
    "                    [--expert_format bf16|int8-g32|int8-g128|int4-g32|int4-g128|fp32]\n"
    "                    [--prefix_caching=true|false] [--cascade auto|on|off]\n"
    "                    [--cascade_calibration FILE]\n"
    "  generate          stream an answer from a running cluster\n"
    "                    moemesh generate --server HOST:PORT --prompt TEXT [sampling flags]\n"
    "  coordinator       the coordinator alone (--model, --listen, --tp, --expert_workers)\n"
    "  attention-worker  one tensor-parallel rank (--coordinator HOST:PORT, --listen)\n"
    "  expert-worker     an expert pool (--coordinator HOST:PORT, --listen, --threads,\n"
    "                    --amx_threshold N: AMX from N tokens per expert, 0: measure at load)\n"
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

moemesh::SchedulerConfig SchedulerFromFlags() {
  moemesh::SchedulerConfig s;
  s.num_blocks = absl::GetFlag(FLAGS_kv_blocks);
  s.block_size = absl::GetFlag(FLAGS_block_size);
  s.max_running = absl::GetFlag(FLAGS_max_running);
  s.max_waiting = absl::GetFlag(FLAGS_max_waiting);
  s.max_step_tokens = absl::GetFlag(FLAGS_max_step_tokens);
  s.context_length = absl::GetFlag(FLAGS_context_length);
  s.prefix_caching = absl::GetFlag(FLAGS_prefix_caching);
  s.cascade.mode = moemesh::ParseCascadeMode(absl::GetFlag(FLAGS_cascade)).value_or(moemesh::CascadeMode::kAuto);
  return s;
}

// The --cascade value, or false after printing why it is not one.
bool CheckCascade(const char* command) {
  const absl::StatusOr<moemesh::CascadeMode> mode = moemesh::ParseCascadeMode(absl::GetFlag(FLAGS_cascade));
  if (mode.ok()) return true;
  std::fprintf(stderr, "moemesh %s: --cascade: %s\n", command, std::string(mode.status().message()).c_str());
  return false;
}

// The --expert_format value, or false after printing why it is not one.
bool CheckExpertFormat(const char* command, const std::string& value) {
  const absl::StatusOr<moemesh::ExpertFormat> format = moemesh::ParseExpertFormat(value);
  if (format.ok()) return true;
  std::fprintf(stderr, "moemesh %s: --expert_format: %s\n", command, std::string(format.status().message()).c_str());
  return false;
}

bool CheckPositive(const char* flag, int32_t value) {
  if (value >= 1) return true;
  std::fprintf(stderr, "moemesh: --%s = %d must be at least 1\n", flag, value);
  return false;
}

int Coordinator() {
  moemesh::CoordinatorConfig c;
  c.model_dir = absl::GetFlag(FLAGS_model);
  c.listen = absl::GetFlag(FLAGS_listen);
  c.port_file = absl::GetFlag(FLAGS_port_file);
  c.tp_size = absl::GetFlag(FLAGS_tp);
  c.expert_workers = absl::GetFlag(FLAGS_expert_workers);
  c.expert_replicas = absl::GetFlag(FLAGS_expert_replicas);
  c.expert_threads = absl::GetFlag(FLAGS_expert_threads);
  c.expert_format = absl::GetFlag(FLAGS_expert_format);
  c.scheduler = SchedulerFromFlags();
  c.cascade_calibration = absl::GetFlag(FLAGS_cascade_calibration);
  c.worker_timeout = std::chrono::seconds(absl::GetFlag(FLAGS_worker_timeout_s));
  if (c.model_dir.empty()) {
    std::fprintf(stderr, "moemesh coordinator: --model is required\n");
    return 2;
  }
  if (!CheckExpertFormat("coordinator", c.expert_format) || !CheckCascade("coordinator")) return 2;
  if (!CheckPositive("tp", c.tp_size) || !CheckPositive("expert_workers", c.expert_workers) ||
      c.scheduler.num_blocks < 0 || !CheckPositive("block_size", c.scheduler.block_size)) {
    if (c.scheduler.num_blocks < 0) std::fprintf(stderr, "moemesh: --kv_blocks must be >= 0\n");
    return 2;
  }
  return moemesh::RunCoordinator(c);
}

int Serve() {
  moemesh::ServeConfig c;
  c.model_dir = absl::GetFlag(FLAGS_model);
  c.host = absl::GetFlag(FLAGS_host);
  c.port = absl::GetFlag(FLAGS_port);
  c.port_file = absl::GetFlag(FLAGS_port_file);
  c.tp_size = absl::GetFlag(FLAGS_tp);
  c.expert_workers = absl::GetFlag(FLAGS_expert_workers);
  c.expert_replicas = absl::GetFlag(FLAGS_expert_replicas);
  c.expert_threads = absl::GetFlag(FLAGS_expert_threads);
  c.expert_memory_limit = absl::GetFlag(FLAGS_expert_memory_limit);
  c.expert_format = absl::GetFlag(FLAGS_expert_format);
  c.expert_amx_threshold = absl::GetFlag(FLAGS_amx_threshold);
  c.gpus = absl::GetFlag(FLAGS_gpus);
  c.cuda_graphs = absl::GetFlag(FLAGS_cuda_graphs);
  if (!c.gpus.empty() && static_cast<int>(c.gpus.size()) != c.tp_size) {
    std::fprintf(stderr, "moemesh serve: --gpus names %zu devices but --tp is %d (one per rank)\n",
                 c.gpus.size(), c.tp_size);
    return 2;
  }
  if (c.model_dir.empty()) {
    std::fprintf(stderr, "moemesh serve: --model is required\n");
    return 2;
  }
  if (!CheckExpertFormat("serve", c.expert_format) || !CheckCascade("serve")) return 2;
  if (!CheckPositive("tp", c.tp_size) || !CheckPositive("expert_workers", c.expert_workers)) return 2;
  if (c.expert_amx_threshold < 0) {
    std::fprintf(stderr, "moemesh serve: --amx_threshold = %lld must be >= 0 (0: measure)\n",
                 static_cast<long long>(c.expert_amx_threshold));
    return 2;
  }
  const moemesh::SchedulerConfig s = SchedulerFromFlags();
  c.coordinator_flags = {"--kv_blocks=" + std::to_string(s.num_blocks),
                         "--block_size=" + std::to_string(s.block_size),
                         "--max_running=" + std::to_string(s.max_running),
                         "--max_waiting=" + std::to_string(s.max_waiting),
                         "--max_step_tokens=" + std::to_string(s.max_step_tokens),
                         "--context_length=" + std::to_string(s.context_length),
                         std::string("--prefix_caching=") + (s.prefix_caching ? "true" : "false"),
                         "--cascade=" + absl::GetFlag(FLAGS_cascade),
                         "--cascade_calibration=" + absl::GetFlag(FLAGS_cascade_calibration)};
  return moemesh::ServeCommand(c);
}

int Generate() {
  moemesh::GenerateCommandConfig c;
  c.server = absl::GetFlag(FLAGS_server);
  c.timeout_s = absl::GetFlag(FLAGS_timeout_s);
  moemesh::v1::GenerateRequest& r = c.request;
  const std::vector<std::string> ids = absl::GetFlag(FLAGS_token_ids);
  if (!ids.empty()) {
    for (const std::string& id : ids) r.mutable_token_ids()->add_ids(std::atoi(id.c_str()));
  } else {
    r.set_text(absl::GetFlag(FLAGS_prompt));
  }
  moemesh::v1::SamplingParams* s = r.mutable_sampling();
  if (Set(absl::GetFlag(FLAGS_temperature))) s->set_temperature(absl::GetFlag(FLAGS_temperature));
  if (Set(absl::GetFlag(FLAGS_top_p))) s->set_top_p(absl::GetFlag(FLAGS_top_p));
  if (Set(absl::GetFlag(FLAGS_min_p))) s->set_min_p(absl::GetFlag(FLAGS_min_p));
  if (Set(absl::GetFlag(FLAGS_repetition_penalty))) s->set_repetition_penalty(absl::GetFlag(FLAGS_repetition_penalty));
  if (Set(absl::GetFlag(FLAGS_presence_penalty))) s->set_presence_penalty(absl::GetFlag(FLAGS_presence_penalty));
  if (Set(absl::GetFlag(FLAGS_frequency_penalty))) s->set_frequency_penalty(absl::GetFlag(FLAGS_frequency_penalty));
  if (absl::GetFlag(FLAGS_top_k) >= 0) s->set_top_k(absl::GetFlag(FLAGS_top_k));
  if (absl::GetFlag(FLAGS_seed) >= 0) s->set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  if (absl::GetFlag(FLAGS_max_tokens) != 0) r.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  if (absl::GetFlag(FLAGS_logprobs) >= 0) r.set_logprobs(absl::GetFlag(FLAGS_logprobs));
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) r.add_stop(stop);
  for (const std::string& id : absl::GetFlag(FLAGS_stop_token_ids)) r.add_stop_token_ids(std::atoi(id.c_str()));
  r.set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  c.show_logprobs = absl::GetFlag(FLAGS_logprobs) >= 0;
  return moemesh::GenerateCommand(c);
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
  if (command == "serve") return Serve();
  if (command == "generate") return Generate();
  if (command == "coordinator") return Coordinator();
  if (command == "attention-worker" || command == "expert-worker") {
    moemesh::WorkerProcessConfig w;
    w.coordinator = absl::GetFlag(FLAGS_coordinator);
    w.listen = absl::GetFlag(FLAGS_listen);
    w.name = absl::GetFlag(FLAGS_name);
    w.threads = absl::GetFlag(FLAGS_threads);
    w.memory_limit_bytes = static_cast<uint64_t>(std::max<int64_t>(0, absl::GetFlag(FLAGS_memory_limit)));
    w.amx_threshold = absl::GetFlag(FLAGS_amx_threshold);
    if (w.amx_threshold < 0) {
      std::fprintf(stderr, "moemesh %s: --amx_threshold = %lld must be >= 0 (0: measure)\n",
                   command.c_str(), static_cast<long long>(w.amx_threshold));
      return 2;
    }
    w.gpu = absl::GetFlag(FLAGS_gpu);
    w.cuda_graphs = absl::GetFlag(FLAGS_cuda_graphs);
    if (w.coordinator.empty()) {
      std::fprintf(stderr, "moemesh %s: --coordinator HOST:PORT is required\n", command.c_str());
      return 2;
    }
    return command == "attention-worker" ? moemesh::RunAttentionWorker(w) : moemesh::RunExpertWorker(w);
  }
  std::fprintf(stderr, "moemesh: unknown command \"%s\"\n\n%s\n", command.c_str(), kUsage);
  return 2;
}
