#!/usr/bin/env python3
"""Generates every committed test fixture of moemesh, and the toy demo model.

What it writes (all from fixed seeds; running it twice gives byte-identical files):
  <out>/tokenizers/{qwen2,gpt2,llama3}/  tokenizer.json + expected.json (ids, decoded text)
  <out>/models/<arch>_{f32,bf16}/        tiny random MoE models (transformers classes) with
                                         reference.json (fp32 logits + greedy tokens)
  <out>/models/qwen3_moe_sharded/        a copy of qwen3_moe_bf16 split over >= 2 shards
  <out>/models/qwen3_moe_fused/          qwen3_moe_bf16 with experts in the fused v5 layout
  <out>/models/{qwen3_moe_kv4,mixtral_kv8,qwen2_moe_h6,olmoe_h6}/
                                         bf16 models whose head counts split over 2..8
                                         tensor-parallel ranks (TP_MODEL_SEEDS below)
  <demo>/                                a Qwen3-MoE toy trained for a minute on the corpus below

How to run it, from the repository root (CPU only, about 2-3 minutes):
  python3 -m venv /tmp/fixenv
  /tmp/fixenv/bin/pip install -r tools/requirements-fixtures.txt
  /tmp/fixenv/bin/python tools/gen_fixtures.py --out tests/fixtures --demo models/demo

It deletes and rewrites the folders it owns under --out (tokenizers/, models/) and --demo.
It does not belong here: anything the C++ tests compute themselves, or fixtures another
script owns. Everything runs single-threaded so that training is bitwise reproducible.
"""

import os

# Single-threaded everything, before torch and tokenizers start their pools.
os.environ["RAYON_RS_NUM_CPUS"] = "1"
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import safetensors.torch
import tokenizers
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------

from fixture_corpus import TEST_CORPUS, TRAIN_CORPUS  # noqa: E402  (data, beside this file)

# Prompts for the reference runs: 1, 4, 8 and 12 tokens with the qwen2 tokenizer. Logits are
# stored for LOGIT_PROMPTS only (size); greedy outputs for all of them.
GREEDY_PROMPTS = [
    "The",
    "The quick brown fox",
    "The lazy dog sleeps in the",
    "Once upon a time there",
]
LOGIT_PROMPTS = [GREEDY_PROMPTS[0], GREEDY_PROMPTS[1], GREEDY_PROMPTS[3]]
GREEDY_TOKENS = 40

# Every fixture must keep greedy choices and expert choices clear of near-ties (fp32 engines
# agree to ~1e-5), and greedy runs must not collapse to one repeated token.
MIN_LOGIT_GAP, MIN_ROUTER_GAP, MIN_DISTINCT_TOKENS = 0.005, 0.005, 5

QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
LLAMA3_PATTERN = QWEN2_PATTERN.replace(r"|\p{N}|", r"|\p{N}{1,3}|")

TOKENIZER_TRAIN_VOCAB = 500  # before added tokens; the final sizes are 501..503

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def write_json(path, obj, indent=None):
    """Writes JSON with a trailing newline; compact unless indent is given."""
    seps = (",", ": ") if indent is not None else (",", ":")
    text = json.dumps(obj, ensure_ascii=False, indent=indent, separators=seps)
    Path(path).write_text(text + "\n", encoding="utf-8")


def round7(values):
    """Floats with 7 significant digits: small files, still well inside fp32 noise."""
    return [float(f"{v:.7g}") for v in values]


def reset_dir(path):
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# --------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------


def build_tokenizer(name):
    """Trains a byte-level BPE tokenizer shaped like the named family on TRAIN_CORPUS."""
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False,
                                          trim_offsets=False)
    if name == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            byte_level])
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    elif name == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        specials = ["<|endoftext|>"]
    elif name == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            byte_level])
        specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    else:
        raise ValueError(f"unknown tokenizer family {name}")
    tok.decoder = decoders.ByteLevel()

    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_TRAIN_VOCAB, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator([TRAIN_CORPUS], trainer=trainer)
    tok.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False)
                            for s in specials])

    # Post-processors as the real families ship them (ByteLevel only touches offsets).
    if name == "llama3":
        bos = "<|begin_of_text|>"
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
            special_tokens=[(bos, tok.token_to_id(bos))])
        tok.model.ignore_merges = True  # as in Llama 3: a pre-token found in vocab is kept
    elif name == "gpt2":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                                  use_regex=False)

    size = tok.get_vocab_size(with_added_tokens=True)
    assert size % 64 != 0, f"{name}: vocab {size} is a multiple of 64"
    assert tok.get_vocab_size(with_added_tokens=False) == TOKENIZER_TRAIN_VOCAB, (
        f"{name}: trainer stopped at {tok.get_vocab_size(with_added_tokens=False)}")
    return tok


def expected_cases(tok):
    cases = []
    for text in TEST_CORPUS:
        ids = tok.encode(text, add_special_tokens=True).ids
        ids_plain = tok.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids, "ids_no_special": ids_plain,
                      "decoded": tok.decode(ids, skip_special_tokens=False)})
    return {"cases": cases}


def tokenizer_config(tok):
    """The tokenizer_config.json placed next to each model's tokenizer.json."""
    added = {}
    for tid, tokobj in sorted(tok.get_added_tokens_decoder().items()):
        added[str(tid)] = {"content": tokobj.content, "lstrip": False, "normalized": False,
                           "rstrip": False, "single_word": False, "special": True}
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "model_max_length": 2048,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }


def write_tokenizer_files(tok, directory):
    tok.save(str(Path(directory) / "tokenizer.json"))
    write_json(Path(directory) / "tokenizer_config.json", tokenizer_config(tok), indent=2)


def gen_tokenizers(out):
    toks = {}
    for name in ("qwen2", "gpt2", "llama3"):
        tok = build_tokenizer(name)
        d = out / "tokenizers" / name
        d.mkdir(parents=True)
        tok.save(str(d / "tokenizer.json"))
        write_json(d / "expected.json", expected_cases(tok), indent=1)
        # Round trip through the saved file: what the C++ side reads must give the same ids.
        again = Tokenizer.from_file(str(d / "tokenizer.json"))
        assert expected_cases(again) == expected_cases(tok)
        print(f"tokenizer {name}: vocab {tok.get_vocab_size(True)} "
              f"(+{tok.get_vocab_size(True) - tok.get_vocab_size(False)} added)")
        toks[name] = tok
    return toks


# --------------------------------------------------------------------------------------
# Tiny random models
# --------------------------------------------------------------------------------------


# Seeds picked once by trying 1000..1083, so that both the f32 and the bf16 model of each
# architecture pass the MIN_* checks above; the checks run again on every generation.
MODEL_SEEDS = {"qwen3_moe": 1039, "mixtral": 1019, "qwen2_moe": 1010, "olmoe": 1079}


def model_specs(vocab, eot, im_end):
    """name -> (model class, config, generation eos). One row per architecture."""
    common = dict(vocab_size=vocab, max_position_embeddings=128, bos_token_id=None,
                  eos_token_id=eot, pad_token_id=None, use_cache=True)
    return {
        "qwen3_moe": (transformers.Qwen3MoeForCausalLM, transformers.Qwen3MoeConfig(
            hidden_size=48, num_attention_heads=3, num_key_value_heads=1, head_dim=24,
            num_hidden_layers=3, num_experts=6, num_experts_per_tok=3,
            moe_intermediate_size=16, intermediate_size=40, mlp_only_layers=[1],
            decoder_sparse_step=1, norm_topk_prob=True, tie_word_embeddings=True,
            rope_theta=1e6, **common), [eot, im_end]),
        "mixtral": (transformers.MixtralForCausalLM, transformers.MixtralConfig(
            hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
            num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
            intermediate_size=24, rope_theta=1e6, sliding_window=None,
            tie_word_embeddings=False, **common), eot),
        "qwen2_moe": (transformers.Qwen2MoeForCausalLM, transformers.Qwen2MoeConfig(
            hidden_size=60, num_attention_heads=5, num_key_value_heads=1,
            num_hidden_layers=3, num_experts=5, num_experts_per_tok=2,
            moe_intermediate_size=16, shared_expert_intermediate_size=24,
            intermediate_size=32, decoder_sparse_step=2, norm_topk_prob=False,
            qkv_bias=True, use_sliding_window=False, tie_word_embeddings=False,
            **common), [eot, im_end]),
        "olmoe": (transformers.OlmoeForCausalLM, transformers.OlmoeConfig(
            hidden_size=48, num_attention_heads=3, num_key_value_heads=3,
            num_hidden_layers=2, num_experts=5, num_experts_per_tok=3,
            intermediate_size=20, norm_topk_prob=False, clip_qkv=2.0, rope_theta=1e4,
            tie_word_embeddings=False, **common), eot),
    }


# The tensor-parallel fixtures (bf16 only). Seeds picked once by trying 2000, 2001, ... in
# order and keeping the first that passes the MIN_* checks. Each model draws from its own
# seeds and they are generated after every model above, so the older files do not change.
TP_MODEL_SEEDS = {"qwen3_moe_kv4": 2007, "mixtral_kv8": 2002, "qwen2_moe_h6": 2001,
                  "olmoe_h6": 2001}


def tp_model_specs(vocab, eot, im_end):
    """name -> (arch, (model class, config, generation eos)). Query/KV heads per model:
    qwen3_moe_kv4 8/4 (TP 2, 4, 8; at TP 8 each KV head sits on 2 ranks, head_dim 16 is not
    hidden/heads), mixtral_kv8 8/8 (TP 2, 4, 8; one KV head per rank at TP 8), qwen2_moe_h6
    and olmoe_h6 6/2 (TP 2; not 4 or 8). Every intermediate size divides by 8."""
    common = dict(vocab_size=vocab, max_position_embeddings=128, bos_token_id=None,
                  eos_token_id=eot, pad_token_id=None, use_cache=True)
    return {
        "qwen3_moe_kv4": ("qwen3_moe", (transformers.Qwen3MoeForCausalLM,
                                        transformers.Qwen3MoeConfig(
            hidden_size=64, num_attention_heads=8, num_key_value_heads=4, head_dim=16,
            num_hidden_layers=2, num_experts=6, num_experts_per_tok=2,
            moe_intermediate_size=16, intermediate_size=32, mlp_only_layers=[],
            decoder_sparse_step=1, norm_topk_prob=True, tie_word_embeddings=True,
            rope_theta=1e6, **common), [eot, im_end])),
        "mixtral_kv8": ("mixtral", (transformers.MixtralForCausalLM, transformers.MixtralConfig(
            hidden_size=64, num_attention_heads=8, num_key_value_heads=8,
            num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
            intermediate_size=16, rope_theta=1e6, sliding_window=None,
            tie_word_embeddings=False, **common), eot)),
        "qwen2_moe_h6": ("qwen2_moe", (transformers.Qwen2MoeForCausalLM,
                                       transformers.Qwen2MoeConfig(
            hidden_size=72, num_attention_heads=6, num_key_value_heads=2,
            num_hidden_layers=2, num_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=16, shared_expert_intermediate_size=32,
            intermediate_size=32, decoder_sparse_step=1, norm_topk_prob=False,
            qkv_bias=True, use_sliding_window=False, tie_word_embeddings=False,
            **common), [eot, im_end])),
        "olmoe_h6": ("olmoe", (transformers.OlmoeForCausalLM, transformers.OlmoeConfig(
            hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
            num_hidden_layers=2, num_experts=4, num_experts_per_tok=2,
            intermediate_size=16, norm_topk_prob=False, clip_qkv=2.0, rope_theta=1e4,
            tie_word_embeddings=False, **common), eot)),
    }


def is_norm_weight(name):
    return "norm" in name and name.endswith(".weight")


def is_router_weight(name):
    return name.endswith("mlp.gate.weight") or name.endswith("block_sparse_moe.gate.weight")


def reinit_(model, seed):
    """Redraws every weight with a large std so that logits and routes are well separated."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name == "model.norm.weight":  # scales every logit: wider top-1/top-2 gaps
                p.copy_(3.0 + 0.3 * noise)
            elif is_norm_weight(name):
                p.copy_(1.0 + 0.1 * noise)
            elif is_router_weight(name):
                p.copy_(1.0 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def build_random_model(arch, spec, seed):
    cls, config, gen_eos = spec
    torch.manual_seed(seed)
    model = cls(config).eval()
    reinit_(model, seed + 1)
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=None, eos_token_id=gen_eos, pad_token_id=config.eos_token_id)
    return model


def load_fp32(directory):
    """Loads saved weights (f32 or bf16) as float32: bf16 values widen exactly."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager").eval()
    return model


def greedy_no_cache(model, ids, steps):
    """Plain argmax loop over full recomputes, to cross-check generate()."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            seq.append(int(torch.argmax(model(torch.tensor([seq])).logits[0, -1])))
    return seq[len(ids):]


def separation(model, prompt_ids, output_ids):
    """Smallest top-1/top-2 logit gap over the greedy steps, and smallest gap between the
    k-th and (k+1)-th router logit over every token and MoE layer of the whole run."""
    top_k = model.config.num_experts_per_tok
    with torch.no_grad():
        out = model(torch.tensor([prompt_ids + output_ids]), output_router_logits=True)
    steps = out.logits[0, len(prompt_ids) - 1:-1]
    top2 = torch.topk(steps, 2, dim=-1).values
    logit_gap = float((top2[:, 0] - top2[:, 1]).min())
    router_gap = math.inf
    for router in out.router_logits:
        top = torch.topk(router, top_k + 1, dim=-1).values
        router_gap = min(router_gap, float((top[:, top_k - 1] - top[:, top_k]).min()))
    return logit_gap, router_gap


def greedy_run(model, arch, ids):
    mask = torch.ones(1, len(ids), dtype=torch.long)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=mask, do_sample=False,
                             max_new_tokens=GREEDY_TOKENS)
    new = out[0, len(ids):].tolist()
    assert len(new) == GREEDY_TOKENS, f"{arch}: greedy gave {len(new)} tokens"
    assert greedy_no_cache(model, ids, GREEDY_TOKENS) == new, f"{arch}: cache path differs"
    return new


def reference(directory, arch, tok, weights_dtype):
    model = load_fp32(directory)
    model.generation_config.eos_token_id = None  # always exactly GREEDY_TOKENS new tokens
    model.generation_config.pad_token_id = tok.token_to_id("<|endoftext|>")
    prompts, greedy, gaps = [], [], []
    for text in GREEDY_PROMPTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert 1 <= len(ids) <= 12, f"prompt {text!r} has {len(ids)} tokens"
        if text in LOGIT_PROMPTS:
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0]
            prompts.append({"text": text, "ids": ids,
                            "logits": [round7(row.tolist()) for row in logits]})
        new = greedy_run(model, arch, ids)
        gaps.append(separation(model, ids, new) + (len(set(new)),))
        greedy.append({"prompt_ids": ids, "output_ids": new})
    logit_gap, router_gap, distinct = (min(g[i] for g in gaps) for i in range(3))
    name = Path(directory).name
    assert logit_gap >= MIN_LOGIT_GAP, f"{name}: greedy top-2 gap {logit_gap}"
    assert router_gap >= MIN_ROUTER_GAP, f"{name}: router k/k+1 gap {router_gap}"
    assert distinct >= MIN_DISTINCT_TOKENS, f"{name}: only {distinct} distinct greedy tokens"
    return {"arch": arch, "weights_dtype": weights_dtype,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__.split("+")[0],
            "min_greedy_logit_gap": round7([logit_gap])[0],
            "min_router_gap": round7([router_gap])[0],
            "prompts": prompts, "greedy": greedy}


def olmoe_clip_fraction(directory, tok):
    """Share of q/k/v projection values that clip_qkv clamps on the reference prompts."""
    model = load_fp32(directory)
    clip = model.config.clip_qkv
    counts = [0, 0]

    def hook(module, inputs, output):
        if "q_proj" in module._fixture_name or "k_proj" in module._fixture_name:
            norm = module._fixture_norm
            output = norm(output)
        counts[0] += int((output.abs() > clip).sum())
        counts[1] += output.numel()

    for name, mod in model.named_modules():
        for proj, norm in (("q_proj", "q_norm"), ("k_proj", "k_norm"), ("v_proj", None)):
            if name.endswith(proj):
                mod._fixture_name = name
                parent = model.get_submodule(name.rsplit(".", 1)[0])
                mod._fixture_norm = getattr(parent, norm) if norm else None
                mod.register_forward_hook(hook)
    with torch.no_grad():
        for text in GREEDY_PROMPTS:
            model(torch.tensor([tok.encode(text, add_special_tokens=False).ids]))
    return counts[0] / counts[1]


def describe(config):
    c = config
    experts = getattr(c, "num_experts", None) or getattr(c, "num_local_experts", None)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return (f"heads {c.num_attention_heads} kv {c.num_key_value_heads} head_dim {head_dim} "
            f"hidden {c.hidden_size} layers {c.num_hidden_layers} experts {experts} "
            f"top-k {c.num_experts_per_tok} vocab {c.vocab_size} tied {c.tie_word_embeddings}")


def save_model_dir(model, directory, tok, dtype, **save_kwargs):
    model = model.to(dtype)
    model.config.dtype = dtype
    model.save_pretrained(directory, safe_serialization=True, **save_kwargs)
    write_tokenizer_files(tok, directory)


def fuse_experts(state):
    """Rewrites per-expert gate/up/down tensors into the transformers-v5 fused layout."""
    fused, per_layer = {}, {}
    for key, value in state.items():
        parts = key.split(".")
        if ".mlp.experts." in key:
            layer, expert, proj = int(parts[2]), int(parts[5]), parts[6]
            per_layer.setdefault(layer, {}).setdefault(proj, {})[expert] = value
        else:
            fused[key] = value
    for layer, projs in per_layer.items():
        n = len(projs["gate_proj"])
        gate_up = [torch.cat([projs["gate_proj"][e], projs["up_proj"][e]], dim=0)
                   for e in range(n)]
        prefix = f"model.layers.{layer}.mlp.experts."
        fused[prefix + "gate_up_proj"] = torch.stack(gate_up).contiguous()
        fused[prefix + "down_proj"] = torch.stack(
            [projs["down_proj"][e] for e in range(n)]).contiguous()
    return dict(sorted(fused.items()))


def write_fused_copy(src, dst):
    dst.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "reference.json"):
        shutil.copyfile(src / name, dst / name)
    state = safetensors.torch.load_file(str(src / "model.safetensors"))
    fused = fuse_experts(state)
    safetensors.torch.save_file(fused, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return fused


def gen_model_dir(d, arch, spec, seed, tok, dtype):
    """Builds, saves and checks one random model; returns its reference.json content."""
    model = build_random_model(arch, spec, seed=seed)
    save_model_dir(model, d, tok, dtype)
    ref = reference(d, arch, tok, str(dtype).replace("torch.", ""))
    write_json(d / "reference.json", ref)
    print(f"model {d.name}: {describe(model.config)}; min gaps: greedy "
          f"{ref['min_greedy_logit_gap']:.4f} router {ref['min_router_gap']:.4f}")
    if arch == "olmoe":
        print(f"  olmoe clip_qkv clamps {100 * olmoe_clip_fraction(d, tok):.1f}% of q/k/v")
    return ref


def gen_models(out, tok):
    vocab = tok.get_vocab_size(with_added_tokens=True)
    eot, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    specs = model_specs(vocab, eot, im_end)
    root = out / "models"
    for arch, spec in specs.items():
        for suffix, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
            gen_model_dir(root / f"{arch}_{suffix}", arch, spec, MODEL_SEEDS[arch], tok, dtype)

    # A sharded copy: same weights as qwen3_moe_bf16, split over several files.
    src = root / "qwen3_moe_bf16"
    model = load_fp32(src)
    save_model_dir(model, root / "qwen3_moe_sharded", tok, torch.bfloat16,
                   max_shard_size="60KB")
    shutil.copyfile(src / "reference.json", root / "qwen3_moe_sharded" / "reference.json")
    shards = sorted(p.name for p in (root / "qwen3_moe_sharded").glob("*.safetensors"))
    assert len(shards) >= 2, shards
    check_same_weights(src, root / "qwen3_moe_sharded")
    print(f"model qwen3_moe_sharded: {len(shards)} shards")

    fused = write_fused_copy(src, root / "qwen3_moe_fused")
    print(f"model qwen3_moe_fused: {len(fused)} tensors")

    for name, (arch, spec) in tp_model_specs(vocab, eot, im_end).items():
        gen_model_dir(root / name, arch, spec, TP_MODEL_SEEDS[name], tok, torch.bfloat16)


def check_same_weights(a, b):
    sa, sb = load_fp32(a).state_dict(), load_fp32(b).state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------------------------
# Demo model
# --------------------------------------------------------------------------------------

DEMO_README = """\
# Demo model (a toy)

A tiny Qwen3-MoE model (hidden {hidden}, {layers} layers, {experts} experts, top-{topk},
{heads} query heads / {kv} KV heads, head_dim {head_dim}, tied embeddings, vocab {vocab},
bf16 weights, {params} parameters) for trying moemesh end to end without downloading
anything. It is a toy: it was trained for {steps} steps on a few kilobytes of text that are
embedded in `tools/gen_fixtures.py`, so it mostly recites that text. Greedy decoding of
"The quick brown fox" gives recognisable words; nothing else about it is meaningful.

Made by `tools/gen_fixtures.py` (fixed seeds, single-threaded, CPU, about a minute):

    python3 -m venv /tmp/fixenv
    /tmp/fixenv/bin/pip install -r tools/requirements-fixtures.txt
    /tmp/fixenv/bin/python tools/gen_fixtures.py --out tests/fixtures --demo models/demo

Training: AdamW (lr {lr}, warmup then cosine decay), batch {batch} x {seq} tokens, final
training loss {loss:.3f}. Tokenizer: the byte-level BPE tokenizer of the fixtures
(`tests/fixtures/tokenizers/qwen2`), trained on the same text.
Sample (greedy, 40 tokens): {sample!r}
"""

DEMO_STEPS, DEMO_BATCH, DEMO_SEQ, DEMO_LR = 300, 16, 64, 3e-3


def demo_config(vocab, eot):
    return transformers.Qwen3MoeConfig(
        vocab_size=vocab, hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, num_hidden_layers=4, num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=64, intermediate_size=256, norm_topk_prob=True,
        tie_word_embeddings=True, max_position_embeddings=2048, rope_theta=1e6,
        bos_token_id=None, eos_token_id=eot, pad_token_id=None)


def train_demo(model, data):
    opt = torch.optim.AdamW(model.parameters(), lr=DEMO_LR, weight_decay=0.01,
                            betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(7)
    warmup = 20
    model.train()
    loss = None
    for step in range(DEMO_STEPS):
        lr = DEMO_LR * min(1.0, (step + 1) / warmup) * 0.5 * (
            1 + math.cos(math.pi * step / DEMO_STEPS))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(data) - DEMO_SEQ, (DEMO_BATCH,), generator=gen)
        batch = torch.stack([data[s:s + DEMO_SEQ] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss  # the model shifts the labels
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == DEMO_STEPS - 1:
            print(f"  demo step {step:4d} loss {loss.item():.4f} lr {lr:.5f}", flush=True)
    model.eval()
    return loss.item()


def gen_demo(demo, tok):
    vocab = tok.get_vocab_size(with_added_tokens=True)
    eot = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(2024)
    config = demo_config(vocab, eot)
    model = transformers.Qwen3MoeForCausalLM(config)
    text = TRAIN_CORPUS + "<|endoftext|>"
    data = torch.tensor(tok.encode(text, add_special_tokens=False).ids, dtype=torch.long)
    print(f"demo: {sum(p.numel() for p in model.parameters())} parameters, "
          f"{len(data)} training tokens")
    t0 = time.time()
    loss = train_demo(model, data)
    print(f"demo: trained in {time.time() - t0:.0f} s, final loss {loss:.4f}")
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=None, eos_token_id=eot, pad_token_id=eot)
    save_model_dir(model, demo, tok, torch.bfloat16)

    saved = load_fp32(demo)
    ids = tok.encode("The quick brown fox", add_special_tokens=False).ids
    with torch.no_grad():
        out = saved.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                             dtype=torch.long), do_sample=False, max_new_tokens=40)
    sample = tok.decode(out[0].tolist(), skip_special_tokens=False)
    print(f"demo sample: {sample!r}")
    c = config
    (demo / "README.md").write_text(DEMO_README.format(
        hidden=c.hidden_size, layers=c.num_hidden_layers, experts=c.num_experts,
        topk=c.num_experts_per_tok, heads=c.num_attention_heads, kv=c.num_key_value_heads,
        head_dim=c.head_dim, vocab=c.vocab_size,
        params=sum(p.numel() for p in saved.parameters()), steps=DEMO_STEPS, lr=DEMO_LR,
        batch=DEMO_BATCH, seq=DEMO_SEQ, loss=loss, sample=sample), encoding="utf-8")


# --------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="fixtures root (tests/fixtures)")
    parser.add_argument("--demo", type=Path, help="demo model folder (models/demo)")
    args = parser.parse_args()

    for sub in ("tokenizers", "models"):
        if (args.out / sub).exists():
            shutil.rmtree(args.out / sub)
    args.out.mkdir(parents=True, exist_ok=True)
    toks = gen_tokenizers(args.out)
    gen_models(args.out, toks["qwen2"])
    if args.demo:
        gen_demo(reset_dir(args.demo), toks["qwen2"])


if __name__ == "__main__":
    main()
