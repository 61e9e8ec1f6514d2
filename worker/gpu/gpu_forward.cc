#include "worker/gpu/gpu_forward.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "kernels/cuda/attention_generic.h"
#include "kernels/cuda/cascade.h"
#include "kernels/cuda/layout_ops.h"
#include "kernels/cuda/ops.h"
#include "kernels/ref/ops.h"

namespace moemesh {
namespace {

absl::Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("CUDA ", what, ": ", cudaGetErrorString(e)));
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int32_t NextPow2(int32_t v) {
  int32_t p = 1;
  while (p < v) p *= 2;
  return p;
}

void CUDART_CB ExpertTrampoline(void* arg) {
  auto* a = static_cast<std::pair<GpuForward*, int>*>(arg);
  a->first->RunExperts(a->second);
}

}  // namespace

// Device and pinned buffers sized once for the largest step (see Init for the sizes).
struct GpuForward::Buffers {
  std::vector<void*> device, pinned;
  uint64_t device_bytes = 0;

  template <typename T>
  absl::StatusOr<T*> Device(int64_t count) {
    void* p = nullptr;
    const size_t bytes = std::max<size_t>(1, static_cast<size_t>(count) * sizeof(T));
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(
          absl::StrCat("GPU buffers: cannot allocate ", bytes, " more bytes (", device_bytes,
                       " allocated); lower --max_step_tokens or --max_running"));
    }
    cudaMemset(p, 0, bytes);
    device.push_back(p);
    device_bytes += bytes;
    return static_cast<T*>(p);
  }
  template <typename T>
  absl::StatusOr<T*> Pinned(int64_t count) {
    void* p = nullptr;
    const size_t bytes = std::max<size_t>(1, static_cast<size_t>(count) * sizeof(T));
    if (cudaMallocHost(&p, bytes) != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat("cannot pin ", bytes, " host bytes"));
    }
    std::memset(p, 0, bytes);
    pinned.push_back(p);
    return static_cast<T*>(p);
  }
  ~Buffers() {
    for (void* p : device) cudaFree(p);
    for (void* p : pinned) cudaFreeHost(p);
  }

  int64_t rows = 0;    // activation rows: size * ceil(max tokens / size)
  int64_t chunk = 0;   // MLP rows per rank
  int32_t max_blocks = 0;
  float *x, *normed, *branch, *qkv, *q, *k, *v, *attn, *sums, *inv_freq;
  float *gate_up, *act, *block, *router, *route_w, *shared_y, *shared_gate;
  int32_t* route_ids;
  float *rows_x, *rows_normed, *local_logits, *logit_block, *logit_gathered, *err;
  int32_t* in;  // the step's integer inputs (layout in Step)
  void* decode_ws = nullptr;
  size_t decode_ws_bytes = 0;
  // Cascade: the bounds every cascade step is launched with, its layout words, the members'
  // prefix states and its scratch.
  cuda::CascadeBounds cascade_bounds;
  int64_t cascade_words = 0;
  int32_t* cascade_layout = nullptr;
  int32_t* h_cascade_layout = nullptr;
  float *prefix_v = nullptr, *prefix_lse = nullptr;
  void* cascade_ws = nullptr;
  size_t cascade_ws_bytes = 0;
  // Pinned host side.
  int32_t* h_in;
  float *h_x, *h_w, *h_out, *h_logits, *h_err, *h_err_total;
  int32_t* h_ids;
};

// One step's shapes and the offsets of its integer inputs inside Buffers::in.
struct GpuForward::Step {
  bool graph = false;
  int32_t n = 0;            // token rows (padded in graphs); decode rows come first
  int32_t decode = 0;       // decode rows (one token each), padded in graphs
  int32_t decode_real = 0;
  int32_t prefill = 0;      // prefill sequences
  int32_t max_blocks = 0;   // block-table stride
  int32_t max_kv = 0;       // bound on decode kv lengths
  int32_t max_q = 0;        // bound on prefill query lengths
  int32_t logits = 0;       // logits rows (padded in graphs)
  int32_t logits_real = 0;
  bool cascade = false;     // decode attention as cascade (layout in Buffers::h_cascade_layout)
  int64_t chunk = 0;        // MLP rows per rank
  int64_t mlp_begin = 0;    // this rank's first MLP row
  int64_t mlp_real = 0;     // its rows that are real tokens
  // Offsets (in int32s) inside the input block.
  int64_t o_tokens = 0, o_positions = 0, o_slots = 0, o_d_tables = 0, o_d_lens = 0,
          o_p_start = 0, o_p_qlens = 0, o_p_kvlens = 0, o_p_tables = 0, o_logits = 0,
          in_count = 0;
};

absl::StatusOr<std::unique_ptr<GpuForward>> GpuForward::Create(const ModelConfig& config,
                                                                TpLayout layout,
                                                                DeviceWeights weights,
                                                                NcclGroup* tp,
                                                                ExpertClient* experts,
                                                                GpuForwardConfig cfg) {
  if (experts == nullptr && config.num_moe_layers() > 0) {
    return absl::InvalidArgumentError("GPU forward: the model has MoE layers but no expert client");
  }
  if ((tp == nullptr && layout.size != 1) ||
      (tp != nullptr && (tp->rank() != layout.rank || tp->size() != layout.size))) {
    return absl::InvalidArgumentError(absl::StrCat("GPU forward: layout rank ", layout.rank, "/",
                                                   layout.size, " does not match the NCCL group"));
  }
  if (config.head_dim < 1 || config.head_dim > cuda::kGenericMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat("GPU forward: head_dim ", config.head_dim,
                                                   " is not supported (1 to ",
                                                   cuda::kGenericMaxHeadDim, ")"));
  }
  if (config.head_dim != 64 && config.head_dim != 128) {
    MM_LOG(WARNING) << "head_dim " << config.head_dim
                    << ": attention runs the generic kernel (the tiled kernels take 64 and 128)";
  }
  if (cfg.max_step_tokens < 1 || cfg.max_sequences < 1 || cfg.block_size < 1 ||
      cfg.max_context < 1) {
    return absl::InvalidArgumentError("GPU forward: max_step_tokens, max_sequences, block_size "
                                      "and max_context must be positive");
  }
  cfg.max_step_tokens = std::max(cfg.max_step_tokens, cfg.max_sequences);
  std::unique_ptr<GpuForward> f(
      new GpuForward(config, layout, std::move(weights), tp, experts, cfg));
  MM_RETURN_IF_ERROR(f->Init());
  return f;
}

GpuForward::GpuForward(const ModelConfig& config, TpLayout layout, DeviceWeights weights,
                       NcclGroup* tp, ExpertClient* experts, GpuForwardConfig cfg)
    : c_(config),
      layout_(layout),
      weights_(std::move(weights)),
      tp_(tp),
      experts_(experts),
      cfg_(cfg),
      cuda_graphs_(cfg.cuda_graphs) {}

GpuForward::~GpuForward() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  for (cuda::PagedKv& kv : kv_) {
    cudaFree(kv.k);
    cudaFree(kv.v);
  }
  buf_.reset();
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status GpuForward::Init() {
  MM_RETURN_IF_ERROR(Cuda(cudaSetDevice(cfg_.device), "set device"));
  MM_RETURN_IF_ERROR(Cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream"));
  const int64_t H = c_.hidden_size, d = c_.head_dim;
  const int64_t qs = static_cast<int64_t>(layout_.num_heads()) * d;
  const int64_t kvs = static_cast<int64_t>(layout_.num_kv_heads()) * d;
  const int64_t N = cfg_.max_step_tokens, S = cfg_.max_sequences;
  const int64_t size = layout_.size;
  int64_t inter = 1;
  for (const DeviceLayer& l : weights_.layers) {
    inter = std::max({inter, l.dense.down.cols, l.shared.down.cols});
  }
  const int64_t E = std::max(1, c_.num_experts), K = std::max(1, c_.experts_per_token);
  const int64_t slice = layout_.vocab_end - layout_.vocab_begin, padded = layout_.vocab_padded;
  buf_ = std::make_unique<Buffers>();
  Buffers& b = *buf_;
  b.chunk = CeilDiv(N, size);
  b.rows = b.chunk * size;
  b.max_blocks = static_cast<int32_t>(CeilDiv(cfg_.max_context, cfg_.block_size));
  MM_ASSIGN_OR_RETURN(b.x, b.Device<float>(b.rows * H));
  MM_ASSIGN_OR_RETURN(b.normed, b.Device<float>(b.rows * H));
  MM_ASSIGN_OR_RETURN(b.branch, b.Device<float>(b.rows * H));
  MM_ASSIGN_OR_RETURN(b.qkv, b.Device<float>(N * (qs + 2 * kvs)));
  MM_ASSIGN_OR_RETURN(b.q, b.Device<float>(N * qs));
  MM_ASSIGN_OR_RETURN(b.k, b.Device<float>(N * kvs));
  MM_ASSIGN_OR_RETURN(b.v, b.Device<float>(N * kvs));
  MM_ASSIGN_OR_RETURN(b.attn, b.Device<float>(N * qs));
  MM_ASSIGN_OR_RETURN(b.sums, b.Device<float>(2 * N));
  MM_ASSIGN_OR_RETURN(b.inv_freq, b.Device<float>(d / 2));
  MM_ASSIGN_OR_RETURN(b.gate_up, b.Device<float>(b.chunk * 2 * inter));
  MM_ASSIGN_OR_RETURN(b.act, b.Device<float>(b.chunk * inter));
  MM_ASSIGN_OR_RETURN(b.block, b.Device<float>(b.chunk * H));
  MM_ASSIGN_OR_RETURN(b.router, b.Device<float>(b.chunk * E));
  MM_ASSIGN_OR_RETURN(b.route_w, b.Device<float>(b.chunk * K));
  MM_ASSIGN_OR_RETURN(b.route_ids, b.Device<int32_t>(b.chunk * K));
  MM_ASSIGN_OR_RETURN(b.shared_y, b.Device<float>(b.chunk * H));
  MM_ASSIGN_OR_RETURN(b.shared_gate, b.Device<float>(b.chunk));
  MM_ASSIGN_OR_RETURN(b.rows_x, b.Device<float>(S * H));
  MM_ASSIGN_OR_RETURN(b.rows_normed, b.Device<float>(S * H));
  MM_ASSIGN_OR_RETURN(b.local_logits, b.Device<float>(S * slice));
  MM_ASSIGN_OR_RETURN(b.logit_block, b.Device<float>(S * padded));
  MM_ASSIGN_OR_RETURN(b.logit_gathered, b.Device<float>(size * S * padded));
  MM_ASSIGN_OR_RETURN(b.err, b.Device<float>(1));
  const int64_t in_capacity = 3 * N + 2 * S * (b.max_blocks + 1) + 4 * S + 16;
  MM_ASSIGN_OR_RETURN(b.in, b.Device<int32_t>(in_capacity));
  b.decode_ws_bytes = cuda::DecodeWorkspaceBytes(static_cast<int32_t>(S), layout_.num_heads(),
                                                 c_.head_dim, cfg_.max_context);
  MM_ASSIGN_OR_RETURN(auto* ws, b.Device<char>(static_cast<int64_t>(b.decode_ws_bytes)));
  b.decode_ws = ws;
  if (cfg_.max_cascade_levels > 0 && (c_.head_dim == 64 || c_.head_dim == 128)) {
    cuda::CascadeBounds& cb = b.cascade_bounds;
    cb.batch = static_cast<int32_t>(S);
    cb.n_heads = layout_.num_heads();
    cb.max_levels = cfg_.max_cascade_levels;
    cb.max_members = static_cast<int32_t>(S);
    cb.max_depth = std::min(cfg_.max_cascade_depth, cuda::kCascadeMaxDepth);
    cb.max_shared_len = cfg_.max_context;
    cb.max_suffix_len = cfg_.max_context;
    b.cascade_words = cuda::CascadeLayoutWords(cb);
    MM_ASSIGN_OR_RETURN(b.cascade_layout, b.Device<int32_t>(b.cascade_words));
    MM_ASSIGN_OR_RETURN(b.h_cascade_layout, b.Pinned<int32_t>(b.cascade_words));
    const int64_t slots = static_cast<int64_t>(cb.max_levels) * cb.max_members * cb.n_heads;
    MM_ASSIGN_OR_RETURN(b.prefix_v, b.Device<float>(slots * d));
    MM_ASSIGN_OR_RETURN(b.prefix_lse, b.Device<float>(slots));
    cuda::PagedKv probe;
    probe.block_size = cfg_.block_size;
    probe.kv_heads = layout_.num_kv_heads();
    probe.head_dim = c_.head_dim;
    probe.num_blocks = 1;
    cuda::CascadeParams cp;  // sizes only; the pointers are the real buffers
    cp.q = b.q;
    cp.out = b.attn;
    cp.kv_lens = b.in;
    cp.block_tables = b.in;
    cp.layout = b.cascade_layout;
    cp.prefix_v = b.prefix_v;
    cp.prefix_lse = b.prefix_lse;
    cp.bounds = cb;
    cp.max_blocks_per_seq = b.max_blocks;
    b.cascade_ws_bytes = cuda::CascadeWorkspaceBytes(probe, cp);
    MM_ASSIGN_OR_RETURN(auto* cws, b.Device<char>(static_cast<int64_t>(b.cascade_ws_bytes)));
    b.cascade_ws = cws;
  }
  MM_ASSIGN_OR_RETURN(b.h_in, b.Pinned<int32_t>(in_capacity));
  MM_ASSIGN_OR_RETURN(b.h_x, b.Pinned<float>(b.chunk * H));
  MM_ASSIGN_OR_RETURN(b.h_ids, b.Pinned<int32_t>(b.chunk * K));
  MM_ASSIGN_OR_RETURN(b.h_w, b.Pinned<float>(b.chunk * K));
  MM_ASSIGN_OR_RETURN(b.h_out, b.Pinned<float>(b.chunk * H));
  MM_ASSIGN_OR_RETURN(b.h_logits, b.Pinned<float>(layout_.rank == 0 ? size * S * padded : 1));
  MM_ASSIGN_OR_RETURN(b.h_err, b.Pinned<float>(1));
  MM_ASSIGN_OR_RETURN(b.h_err_total, b.Pinned<float>(1));
  std::vector<float> inv_freq(d / 2);
  ref::RopeInvFreq(c_.rope_theta, c_.head_dim, inv_freq.data());
  MM_RETURN_IF_ERROR(Cuda(cudaMemcpy(b.inv_freq, inv_freq.data(), inv_freq.size() * 4,
                                     cudaMemcpyHostToDevice), "upload"));
  gemm_ = std::make_unique<cuda::Gemm>(N, std::max({qs + 2 * kvs, H, 2 * inter, E}),
                                       std::max({H, qs, inter}));
  head_gemm_ = std::make_unique<cuda::Gemm>(S, std::max<int64_t>(slice, 1), H);

  // The KV cache takes what is asked for, or a fraction of what is left.
  const int64_t block_bytes = static_cast<int64_t>(layout_.num_kv_heads()) * cfg_.block_size * d *
                              2 /*bf16*/ * 2 /*k and v*/ * c_.num_layers;
  size_t free_bytes = 0, total = 0;
  MM_RETURN_IF_ERROR(Cuda(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo"));
  const int64_t fit = static_cast<int64_t>(static_cast<double>(free_bytes) *
                                           cfg_.kv_memory_fraction) / block_bytes;
  num_kv_blocks_ = cfg_.num_kv_blocks > 0 ? cfg_.num_kv_blocks
                                          : static_cast<int32_t>(std::min<int64_t>(fit, 1 << 30));
  if (num_kv_blocks_ < 1 || num_kv_blocks_ > fit) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "GPU KV cache: ", std::max(num_kv_blocks_, 1), " blocks of ", block_bytes,
        " bytes need ", std::max<int64_t>(num_kv_blocks_, 1) * block_bytes, " bytes, but only ",
        fit, " blocks fit in ", cfg_.kv_memory_fraction, " of the ", free_bytes,
        " bytes free after ", weights_.bytes, " bytes of weights and ", b.device_bytes,
        " bytes of buffers"));
  }
  const size_t pool = static_cast<size_t>(num_kv_blocks_) * layout_.num_kv_heads() *
                      cfg_.block_size * d * sizeof(__nv_bfloat16);
  for (int l = 0; l < c_.num_layers; ++l) {
    cuda::PagedKv kv;
    kv.num_blocks = num_kv_blocks_;
    kv.block_size = cfg_.block_size;
    kv.kv_heads = layout_.num_kv_heads();
    kv.head_dim = c_.head_dim;
    void *k = nullptr, *v = nullptr;
    MM_RETURN_IF_ERROR(Cuda(cudaMalloc(&k, pool), "KV cache allocation"));
    if (cudaMalloc(&v, pool) != cudaSuccess) {
      cudaFree(k);
      return absl::ResourceExhaustedError("GPU KV cache: allocation failed");
    }
    kv.k = static_cast<__nv_bfloat16*>(k);
    kv.v = static_cast<__nv_bfloat16*>(v);
    MM_RETURN_IF_ERROR(Cuda(cudaMemset(k, 0, pool), "KV cache clear"));
    MM_RETURN_IF_ERROR(Cuda(cudaMemset(v, 0, pool), "KV cache clear"));
    kv_.push_back(kv);
  }
  kv_bytes_ = static_cast<uint64_t>(pool) * 2 * c_.num_layers;
  callback_args_.reserve(c_.num_layers);
  for (int l = 0; l < c_.num_layers; ++l) callback_args_.emplace_back(this, l);
  current_ = std::make_unique<Step>();
  MM_LOG(INFO) << "GPU rank " << layout_.rank << ": " << weights_.bytes << " bytes of weights, "
               << b.device_bytes << " bytes of buffers (decode attention workspace "
               << b.decode_ws_bytes << ", cascade workspace " << b.cascade_ws_bytes
               << "), KV cache " << num_kv_blocks_ << " blocks of " << cfg_.block_size
               << " tokens (" << kv_bytes_ << " bytes)";
  return Cuda(cudaDeviceSynchronize(), "init");
}

absl::Status GpuForward::PrepareStep(absl::Span<const ForwardSequence> batch, bool graph,
                                     Step& s) {
  const Buffers& b = *buf_;
  const int32_t bs = cfg_.block_size;
  std::vector<const ForwardSequence*> decode, prefill;
  int64_t prefill_tokens = 0;
  for (const ForwardSequence& seq : batch) {
    if (seq.tokens.size() == 1) {
      decode.push_back(&seq);
    } else {
      prefill.push_back(&seq);
      prefill_tokens += static_cast<int64_t>(seq.tokens.size());
    }
  }
  s = Step();
  s.graph = graph;
  s.decode_real = static_cast<int32_t>(decode.size());
  s.decode = graph ? std::min(NextPow2(s.decode_real), cfg_.max_sequences) : s.decode_real;
  s.prefill = static_cast<int32_t>(prefill.size());
  s.n = static_cast<int32_t>(s.decode + prefill_tokens);
  int64_t max_kv = 1, max_q = 0;
  for (const ForwardSequence& seq : batch) {
    max_kv = std::max<int64_t>(max_kv, seq.start_position + static_cast<int64_t>(seq.tokens.size()));
    max_q = std::max<int64_t>(max_q, static_cast<int64_t>(seq.tokens.size()));
  }
  if (graph) max_kv = std::min<int64_t>(std::max(256, NextPow2(static_cast<int32_t>(max_kv))),
                                        std::max<int64_t>(max_kv, cfg_.max_context));
  s.max_kv = static_cast<int32_t>(max_kv);
  s.max_q = static_cast<int32_t>(max_q);
  s.max_blocks = static_cast<int32_t>(CeilDiv(max_kv, bs));
  if (s.n > cfg_.max_step_tokens || static_cast<int32_t>(batch.size()) > cfg_.max_sequences ||
      s.max_blocks > b.max_blocks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GPU step: ", s.n, " tokens of ", batch.size(), " sequences up to ", max_kv,
        " positions exceed the worker's limits (", cfg_.max_step_tokens, " tokens, ",
        cfg_.max_sequences, " sequences, ", cfg_.max_context, " positions)"));
  }
  // Input layout.
  int64_t at = 0;
  auto take = [&](int64_t count) {
    const int64_t o = at;
    at += count;
    return o;
  };
  s.o_tokens = take(s.n);
  s.o_positions = take(s.n);
  s.o_slots = take(s.n);
  s.o_d_tables = take(static_cast<int64_t>(s.decode) * s.max_blocks);
  s.o_d_lens = take(s.decode);
  s.o_p_start = take(s.prefill);
  s.o_p_qlens = take(s.prefill);
  s.o_p_kvlens = take(s.prefill);
  s.o_p_tables = take(static_cast<int64_t>(s.prefill) * s.max_blocks);
  // Logits rows: the last row of each sequence that wants them, in batch order.
  std::vector<int32_t> logit_rows;
  {
    int32_t decode_row = 0, prefill_row = s.decode;
    for (const ForwardSequence& seq : batch) {
      const int32_t count = static_cast<int32_t>(seq.tokens.size());
      int32_t last;
      if (count == 1) {
        last = decode_row++;
      } else {
        prefill_row += count;
        last = prefill_row - 1;
      }
      if (seq.logits) logit_rows.push_back(last);
    }
  }
  s.logits_real = static_cast<int32_t>(logit_rows.size());
  s.logits = graph ? s.decode : s.logits_real;
  s.o_logits = take(s.logits);
  s.in_count = at;

  int32_t* in = b.h_in;
  std::fill_n(in, s.in_count, 0);
  auto put_token = [&](int64_t row, const ForwardSequence& seq, size_t i) {
    const int64_t pos = seq.start_position + static_cast<int64_t>(i);
    in[s.o_tokens + row] = seq.tokens[i];
    in[s.o_positions + row] = static_cast<int32_t>(pos);
    in[s.o_slots + row] = seq.block_table[pos / bs] * bs + static_cast<int32_t>(pos % bs);
  };
  for (int32_t r = 0; r < s.decode; ++r) {
    if (r >= s.decode_real) {  // padding: writes nothing, attends nothing
      in[s.o_slots + r] = -1;
      continue;
    }
    const ForwardSequence& seq = *decode[r];
    put_token(r, seq, 0);
    const int64_t kv_len = seq.start_position + 1;
    in[s.o_d_lens + r] = static_cast<int32_t>(kv_len);
    const int64_t blocks = CeilDiv(kv_len, bs);
    for (int64_t j = 0; j < blocks; ++j) in[s.o_d_tables + r * s.max_blocks + j] = seq.block_table[j];
  }
  int64_t row = s.decode;
  for (int32_t p = 0; p < s.prefill; ++p) {
    const ForwardSequence& seq = *prefill[p];
    const int64_t count = static_cast<int64_t>(seq.tokens.size());
    const int64_t kv_len = seq.start_position + count;
    in[s.o_p_start + p] = static_cast<int32_t>(row);
    in[s.o_p_qlens + p] = static_cast<int32_t>(count);
    in[s.o_p_kvlens + p] = static_cast<int32_t>(kv_len);
    const int64_t blocks = CeilDiv(kv_len, bs);
    for (int64_t j = 0; j < blocks; ++j) in[s.o_p_tables + p * s.max_blocks + j] = seq.block_table[j];
    for (int64_t i = 0; i < count; ++i) put_token(row + i, seq, static_cast<size_t>(i));
    row += count;
  }
  for (int32_t i = 0; i < s.logits; ++i) {
    in[s.o_logits + i] = i < s.logits_real ? logit_rows[i] : 0;
  }
  s.chunk = CeilDiv(s.n, layout_.size);
  s.mlp_begin = layout_.rank * s.chunk;
  const int64_t real_rows = graph ? s.decode_real : s.n;
  s.mlp_real = std::clamp<int64_t>(real_rows - s.mlp_begin, 0, s.chunk);
  return absl::OkStatus();
}

absl::Status GpuForward::AllReduce(float* data, size_t count) {
  if (tp_ == nullptr || layout_.size == 1) return absl::OkStatus();
  return tp_->AllReduceSumAsync(data, count, stream_);
}

absl::Status GpuForward::AllGather(const float* in, size_t count, float* out) {
  if (tp_ == nullptr || layout_.size == 1) {
    if (in == out) return absl::OkStatus();
    return Cuda(cudaMemcpyAsync(out, in, count * sizeof(float), cudaMemcpyDeviceToDevice, stream_),
                "copy");
  }
  return tp_->AllGatherAsync(in, count, out, stream_);
}

absl::Status GpuForward::Enqueue(const Step& s) {
  Buffers& b = *buf_;
  const int64_t H = c_.hidden_size;
  MM_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(b.in, b.h_in, s.in_count * sizeof(int32_t),
                                          cudaMemcpyHostToDevice, stream_), "input upload"));
  if (s.cascade) {
    MM_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(b.cascade_layout, b.h_cascade_layout,
                                            b.cascade_words * sizeof(int32_t),
                                            cudaMemcpyHostToDevice, stream_), "cascade layout"));
  }
  cuda::Embedding(b.in + s.o_tokens, weights_.embed.data, layout_.vocab_begin,
                  weights_.embed.rows, b.x, s.n, H, stream_);
  MM_RETURN_IF_ERROR(AllReduce(b.x, static_cast<size_t>(s.n) * H));
  for (int l = 0; l < c_.num_layers; ++l) {
    const DeviceLayer& lw = weights_.layers[l];
    if (l == 0) {
      cuda::RmsNorm(b.x, lw.attn_norm, b.normed, s.n, H, c_.rms_norm_eps, stream_);
    } else {
      cuda::AddRmsNorm(b.x, b.branch, lw.attn_norm, b.normed, s.n, H, c_.rms_norm_eps, stream_);
    }
    MM_RETURN_IF_ERROR(Attention(s, l));
    cuda::AddRmsNorm(b.x, b.branch, lw.mlp_norm, b.normed, s.n, H, c_.rms_norm_eps, stream_);
    MM_RETURN_IF_ERROR(Mlp(s, l));
  }
  cuda::Add(b.x, b.branch, static_cast<int64_t>(s.n) * H, stream_);
  MM_RETURN_IF_ERROR(Logits(s));
  // Every rank learns whether any rank's expert call failed.
  MM_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(b.err, b.h_err, sizeof(float), cudaMemcpyHostToDevice,
                                          stream_), "error flag"));
  MM_RETURN_IF_ERROR(AllReduce(b.err, 1));
  return Cuda(cudaMemcpyAsync(b.h_err_total, b.err, sizeof(float), cudaMemcpyDeviceToHost,
                              stream_), "error flag");
}

absl::Status GpuForward::Attention(const Step& s, int layer) {
  Buffers& b = *buf_;
  const DeviceLayer& lw = weights_.layers[layer];
  const int64_t H = c_.hidden_size, d = c_.head_dim;
  const int heads = layout_.num_heads(), kv_heads = layout_.num_kv_heads();
  const int64_t qs = heads * d, kvs = kv_heads * d;
  const float eps = c_.rms_norm_eps;
  gemm_->Linear(b.normed, lw.wqkv.data, lw.bqkv, b.qkv, s.n, qs + 2 * kvs, H, cfg_.precision,
                stream_);
  cuda::SplitQkv(b.qkv, b.q, b.k, b.v, s.n, qs, kvs, /*clip=*/0.0f, stream_);
  switch (c_.arch->qk_norm) {
    case QkNorm::kNone:
      break;
    case QkNorm::kPerHead:
      cuda::RmsNorm(b.q, lw.q_norm, b.q, static_cast<int64_t>(s.n) * heads, d, eps, stream_);
      cuda::RmsNorm(b.k, lw.k_norm, b.k, static_cast<int64_t>(s.n) * kv_heads, d, eps, stream_);
      break;
    case QkNorm::kWholeProjection:
      MM_RETURN_IF_ERROR(Cuda(cudaMemsetAsync(b.sums, 0, 2 * s.n * sizeof(float), stream_), "memset"));
      cuda::RowSumSquares(b.q, b.sums, s.n, qs, 2, stream_);
      if (layout_.counts_k_norm) cuda::RowSumSquares(b.k, b.sums + 1, s.n, kvs, 2, stream_);
      MM_RETURN_IF_ERROR(AllReduce(b.sums, 2 * static_cast<size_t>(s.n)));
      cuda::ScaleRowsByRms(b.q, b.sums, 2, lw.q_norm, s.n, qs, c_.q_size(), eps, stream_);
      cuda::ScaleRowsByRms(b.k, b.sums + 1, 2, lw.k_norm, s.n, kvs, c_.kv_size(), eps, stream_);
      break;
  }
  if (c_.clip_qkv > 0) {  // after the q/k norms, as OLMoE does
    cuda::Clamp(b.q, static_cast<int64_t>(s.n) * qs, c_.clip_qkv, stream_);
    cuda::Clamp(b.k, static_cast<int64_t>(s.n) * kvs, c_.clip_qkv, stream_);
    cuda::Clamp(b.v, static_cast<int64_t>(s.n) * kvs, c_.clip_qkv, stream_);
  }
  const int32_t* positions = b.in + s.o_positions;
  cuda::RopeNeox(b.q, positions, b.inv_freq, s.n, heads, c_.head_dim, stream_);
  cuda::RopeNeox(b.k, positions, b.inv_freq, s.n, kv_heads, c_.head_dim, stream_);
  cuda::AppendKv(kv_[layer], b.k, b.v, b.in + s.o_slots, s.n, stream_);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int32_t window = static_cast<int32_t>(c_.sliding_window);
  if (s.decode > 0 && s.cascade) {
    cuda::CascadeParams p;
    p.q = b.q;
    p.out = b.attn;
    p.block_tables = b.in + s.o_d_tables;
    p.kv_lens = b.in + s.o_d_lens;
    p.layout = b.cascade_layout;
    p.prefix_v = b.prefix_v;
    p.prefix_lse = b.prefix_lse;
    p.bounds = b.cascade_bounds;
    p.bounds.batch = s.decode;
    p.max_blocks_per_seq = s.max_blocks;
    p.scale = scale;
    p.window = window;
    cuda::CascadeAttention(kv_[layer], p, cuda::CascadeForm::kFused, b.cascade_ws,
                           b.cascade_ws_bytes, stream_);
  } else if (s.decode > 0) {
    cuda::DecodeParams p;
    p.q = b.q;
    p.out = b.attn;
    p.block_tables = b.in + s.o_d_tables;
    p.kv_lens = b.in + s.o_d_lens;
    p.batch = s.decode;
    p.n_heads = heads;
    p.max_blocks_per_seq = s.max_blocks;
    p.max_kv_len = s.max_kv;
    p.scale = scale;
    p.window = window;
    cuda::DecodeAttention(kv_[layer], p, b.decode_ws, b.decode_ws_bytes, stream_);
  }
  if (s.prefill > 0) {
    cuda::PrefillParams p;
    p.q = b.q;
    p.out = b.attn;
    p.q_start = b.in + s.o_p_start;
    p.q_lens = b.in + s.o_p_qlens;
    p.kv_lens = b.in + s.o_p_kvlens;
    p.block_tables = b.in + s.o_p_tables;
    p.batch = s.prefill;
    p.n_heads = heads;
    p.max_blocks_per_seq = s.max_blocks;
    p.max_q_len = s.max_q;
    p.scale = scale;
    p.window = window;
    cuda::PrefillAttention(kv_[layer], p, stream_);
  }
  // Row-parallel o_proj; rank 0 adds the bias inside its partial sum.
  gemm_->Linear(b.attn, lw.wo.data, layout_.rank == 0 ? lw.bo : nullptr, b.branch, s.n, H, qs,
                cfg_.precision, stream_);
  return AllReduce(b.branch, static_cast<size_t>(s.n) * H);
}

absl::Status GpuForward::Mlp(const Step& s, int layer) {
  Buffers& b = *buf_;
  const DeviceLayer& lw = weights_.layers[layer];
  const int64_t H = c_.hidden_size, C = s.chunk;
  const float* in = b.normed + s.mlp_begin * H;
  float* out = layout_.size == 1 ? b.branch : b.block;
  auto ffn = [&](const DeviceFfn& f, float* y) {
    const int64_t inter = f.down.cols;
    gemm_->Linear(in, f.gate_up.data, nullptr, b.gate_up, C, 2 * inter, H, cfg_.precision, stream_);
    cuda::SiluMul(b.gate_up, b.act, C, inter, stream_);
    gemm_->Linear(b.act, f.down.data, nullptr, y, C, H, inter, cfg_.precision, stream_);
  };
  if (!lw.is_moe) {
    ffn(lw.dense, out);
  } else {
    const int E = c_.num_experts, K = c_.experts_per_token;
    gemm_->Linear(in, lw.router.data, nullptr, b.router, C, E, H, cfg_.precision, stream_);
    cuda::RouteTopK(b.router, C, E, K, c_.norm_topk_prob, b.route_ids, b.route_w, stream_);
    MM_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(b.h_x, in, C * H * sizeof(float),
                                            cudaMemcpyDeviceToHost, stream_), "expert input"));
    MM_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(b.h_ids, b.route_ids, C * K * sizeof(int32_t),
                                            cudaMemcpyDeviceToHost, stream_), "expert ids"));
    MM_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(b.h_w, b.route_w, C * K * sizeof(float),
                                            cudaMemcpyDeviceToHost, stream_), "expert weights"));
    MM_RETURN_IF_ERROR(Cuda(cudaLaunchHostFunc(stream_, ExpertTrampoline, &callback_args_[layer]),
                            "expert callback"));
    MM_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(out, b.h_out, C * H * sizeof(float),
                                            cudaMemcpyHostToDevice, stream_), "expert output"));
    if (lw.shared.down.rows > 0) {
      ffn(lw.shared, b.shared_y);
      if (lw.shared_gate.rows > 0) {
        gemm_->Linear(in, lw.shared_gate.data, nullptr, b.shared_gate, C, 1, H, cfg_.precision,
                      stream_);
        cuda::SigmoidGatedAdd(out, b.shared_gate, b.shared_y, C, H, stream_);
      } else {
        cuda::Add(out, b.shared_y, C * H, stream_);
      }
    }
  }
  if (layout_.size == 1) return absl::OkStatus();
  return AllGather(b.block, static_cast<size_t>(C * H), b.branch);
}

void GpuForward::RunExperts(int layer) {
  Buffers& b = *buf_;
  const Step& s = *current_;
  const int64_t H = c_.hidden_size, K = c_.experts_per_token;
  const auto start = std::chrono::steady_clock::now();
  std::fill_n(b.h_out, s.chunk * H, 0.0f);
  if (s.mlp_real > 0) {
    ExpertBatch batch;
    batch.layer = layer;
    batch.num_tokens = static_cast<int32_t>(s.mlp_real);
    batch.hidden = static_cast<int32_t>(H);
    batch.top_k = static_cast<int32_t>(K);
    batch.hidden_states = absl::MakeConstSpan(b.h_x, s.mlp_real * H);
    batch.expert_ids = absl::MakeConstSpan(b.h_ids, s.mlp_real * K);
    batch.expert_weights = absl::MakeConstSpan(b.h_w, s.mlp_real * K);
    absl::Status st = experts_->Run(batch, absl::MakeSpan(b.h_out, s.mlp_real * H));
    if (!st.ok()) {
      *b.h_err += 1.0f;
      if (expert_status_.ok()) {
        expert_status_ = absl::Status(st.code(), absl::StrCat("rank ", layout_.rank, ", layer ",
                                                              layer, ": routed experts: ",
                                                              st.message()));
      }
    }
  }
  stats_.expert_seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

absl::Status GpuForward::Logits(const Step& s) {
  Buffers& b = *buf_;
  const int64_t H = c_.hidden_size;
  if (s.logits == 0) return absl::OkStatus();
  const int64_t slice = layout_.vocab_end - layout_.vocab_begin, padded = layout_.vocab_padded;
  cuda::GatherRows(b.x, b.in + s.o_logits, b.rows_x, s.logits, H, stream_);
  cuda::RmsNorm(b.rows_x, weights_.final_norm, b.rows_normed, s.logits, H, c_.rms_norm_eps,
                stream_);
  head_gemm_->Linear(b.rows_normed, weights_.lm_head.data, nullptr, b.local_logits, s.logits,
                     slice, H, cfg_.precision, stream_);
  const float* gathered = b.local_logits;
  if (layout_.size > 1) {
    MM_RETURN_IF_ERROR(Cuda(cudaMemcpy2DAsync(b.logit_block, padded * sizeof(float),
                                              b.local_logits, slice * sizeof(float),
                                              slice * sizeof(float), s.logits,
                                              cudaMemcpyDeviceToDevice, stream_), "logits pad"));
    MM_RETURN_IF_ERROR(AllGather(b.logit_block, static_cast<size_t>(s.logits) * padded,
                                 b.logit_gathered));
    gathered = b.logit_gathered;
  }
  if (layout_.rank != 0) return absl::OkStatus();
  const int64_t count = layout_.size > 1 ? layout_.size * s.logits * padded : s.logits * slice;
  return Cuda(cudaMemcpyAsync(b.h_logits, gathered, count * sizeof(float), cudaMemcpyDeviceToHost,
                              stream_), "logits download");
}

absl::Status GpuForward::CopyBlocks(absl::Span<const BlockCopy> copies) {
  if (copies.empty()) return absl::OkStatus();
  MM_RETURN_IF_ERROR(Cuda(cudaSetDevice(cfg_.device), "set device"));
  const size_t block_elems =
      static_cast<size_t>(layout_.num_kv_heads()) * cfg_.block_size * c_.head_dim;
  for (const cuda::PagedKv& kv : kv_) {
    for (const BlockCopy& c : copies) {
      for (__nv_bfloat16* pool : {kv.k, kv.v}) {
        MM_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(pool + c.dst * block_elems, pool + c.src * block_elems,
                                                block_elems * sizeof(__nv_bfloat16),
                                                cudaMemcpyDeviceToDevice, stream_),
                                "KV block copy"));
      }
    }
  }
  return Cuda(cudaStreamSynchronize(stream_), "KV block copy");
}

absl::StatusOr<std::vector<float>> GpuForward::Run(absl::Span<const ForwardSequence> batch) {
  return Execute(batch, {});
}

absl::StatusOr<std::vector<float>> GpuForward::RunCascade(
    absl::Span<const ForwardSequence> batch, absl::Span<const ForwardCascadeLevel> levels) {
  return Execute(batch, levels);
}

absl::Status GpuForward::PrepareCascade(absl::Span<const ForwardCascadeLevel> levels, Step& s) {
  const Buffers& b = *buf_;
  s.cascade = false;
  if (levels.empty() || b.cascade_layout == nullptr || s.prefill > 0 ||
      static_cast<int32_t>(levels.size()) > b.cascade_bounds.max_levels) {
    return absl::OkStatus();  // flat
  }
  // In an all-decode step the decode rows are the batch in order, so batch indices are rows.
  std::vector<cuda::CascadeLevelSpec> specs;
  std::vector<int32_t> depth(s.decode, 0);
  for (const ForwardCascadeLevel& l : levels) {
    cuda::CascadeLevelSpec spec;
    spec.members = l.members;
    spec.begin = l.block_begin * cfg_.block_size;
    spec.end = l.block_end * cfg_.block_size;
    for (int32_t m : l.members) {
      if (m < 0 || m >= s.decode_real) return absl::OkStatus();
      if (++depth[m] > b.cascade_bounds.max_depth) return absl::OkStatus();
    }
    specs.push_back(std::move(spec));
  }
  cuda::CascadeBounds bounds = b.cascade_bounds;
  bounds.batch = s.decode;
  std::vector<int32_t> words;
  const std::string problem = cuda::BuildCascadeLayout(bounds, specs, b.h_in + s.o_d_lens, &words);
  if (!problem.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("GPU cascade levels: ", problem));
  }
  if (static_cast<int64_t>(words.size()) > b.cascade_words) {
    return absl::InternalError("GPU cascade layout larger than its buffer");
  }
  std::copy(words.begin(), words.end(), b.h_cascade_layout);
  std::fill(b.h_cascade_layout + words.size(), b.h_cascade_layout + b.cascade_words, 0);
  s.cascade = true;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> GpuForward::Execute(absl::Span<const ForwardSequence> batch,
                                                       absl::Span<const ForwardCascadeLevel> levels) {
  if (batch.empty()) return std::vector<float>{};
  MM_RETURN_IF_ERROR(Cuda(cudaSetDevice(cfg_.device), "set device"));
  bool all_decode = true;
  for (const ForwardSequence& seq : batch) all_decode &= seq.tokens.size() == 1;
  const bool graph = cuda_graphs_ && all_decode &&
                     static_cast<int32_t>(batch.size()) <= cfg_.max_sequences;
  Step& s = *current_;
  MM_RETURN_IF_ERROR(PrepareStep(batch, graph, s));
  MM_RETURN_IF_ERROR(PrepareCascade(levels, s));
  stats_ = GpuStepStats();
  stats_.cascade = s.cascade;
  stats_.batch_bucket = s.decode;
  expert_status_ = absl::OkStatus();
  *buf_->h_err = 0.0f;
  *buf_->h_err_total = 0.0f;
  if (graph) {
    // Cascade steps have their own graphs (a negative context key).
    const std::pair<int32_t, int32_t> key(s.decode, s.cascade ? -s.max_kv : s.max_kv);
    auto it = graphs_.find(key);
    if (it == graphs_.end() && warmed_.contains(key)) {
      cudaGraph_t g;
      MM_RETURN_IF_ERROR(Cuda(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal),
                              "begin capture"));
      absl::Status enq = Enqueue(s);
      cudaError_t end = cudaStreamEndCapture(stream_, &g);
      MM_RETURN_IF_ERROR(enq);
      MM_RETURN_IF_ERROR(Cuda(end, "end capture"));
      cudaGraphExec_t exec;
      cudaError_t inst = cudaGraphInstantiate(&exec, g, 0);
      cudaGraphDestroy(g);
      MM_RETURN_IF_ERROR(Cuda(inst, "graph instantiate"));
      it = graphs_.emplace(key, exec).first;
      stats_.captured = true;
    }
    if (it != graphs_.end()) {
      MM_RETURN_IF_ERROR(Cuda(cudaGraphLaunch(it->second, stream_), "graph launch"));
      stats_.graph = true;
    } else {
      MM_RETURN_IF_ERROR(Enqueue(s));  // first sight of this shape: warm up (picks GEMM algos)
      warmed_.insert(key);
    }
  } else {
    MM_RETURN_IF_ERROR(Enqueue(s));
  }
  MM_RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(stream_), "step"));
  if (*buf_->h_err_total != 0.0f) {
    if (!expert_status_.ok()) return expert_status_;
    return absl::UnavailableError("another rank's routed experts failed in this step");
  }
  if (layout_.rank != 0) return std::vector<float>{};
  const int64_t vocab = c_.vocab_size, padded = layout_.vocab_padded;
  const int64_t slice = layout_.vocab_end - layout_.vocab_begin;
  std::vector<float> logits(static_cast<size_t>(s.logits_real) * vocab);
  const float* h = buf_->h_logits;
  if (layout_.size == 1) {
    std::copy_n(h, logits.size(), logits.data());
    (void)slice;
    return logits;
  }
  const int64_t base = vocab / layout_.size;  // MakeTpLayout's split
  for (int r = 0; r < layout_.size; ++r) {
    const int64_t vb = r * base;
    const int64_t ve = r == layout_.size - 1 ? vocab : vb + base;
    for (int64_t i = 0; i < s.logits_real; ++i) {
      std::copy_n(h + (r * s.logits + i) * padded, ve - vb, logits.data() + i * vocab + vb);
    }
  }
  return logits;
}

}  // namespace moemesh
