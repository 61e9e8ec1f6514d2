#!/usr/bin/env python3
"""Writes a random-weight Qwen3-MoE model whose attention has a CUDA cascade kernel (head_dim
128) for end-to-end cascade runs of bench_prefix_serve on a GPU; the bundled demo model's
head_dim 32 has none. The tokenizer and generation config are the demo model's, so the vocabulary
is its 503 tokens. Needs torch and transformers (not the CI's dependencies).

    python3 bench/make_cascade_model.py OUT_DIR [--heads 8] [--kv_heads 1] [--layers 2]
        [--context 4096] [--seed 0]

Default: 8 query heads over 1 KV head (the per-GPU shape of Llama3-70B at TP 8, FlashInfer
#595's case), head_dim 128, hidden 1024, 8 experts of which 2 per token, bf16.
"""
import argparse
import json
import pathlib
import shutil
import sys


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv_heads", type=int, default=1)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.heads % a.kv_heads != 0:
        sys.exit(f"--heads {a.heads} must be a multiple of --kv_heads {a.kv_heads}")
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    demo = pathlib.Path(__file__).resolve().parent.parent / "models" / "demo"
    demo_config = json.loads((demo / "config.json").read_text())
    torch.manual_seed(a.seed)
    config = Qwen3MoeConfig(
        vocab_size=demo_config["vocab_size"],
        hidden_size=a.heads * 128,
        intermediate_size=512,
        moe_intermediate_size=64,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        head_dim=128,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        max_position_embeddings=a.context,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        eos_token_id=demo_config["eos_token_id"],
        torch_dtype="bfloat16",
    )
    model = Qwen3MoeForCausalLM(config).to(torch.bfloat16)
    out = pathlib.Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(demo / name, out / name)
    # The config in the demo's (transformers 4.x) key names, which moemesh reads; newer
    # transformers versions write some of them differently.
    written = demo_config | {
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "moe_intermediate_size": config.moe_intermediate_size,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": 128,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "max_position_embeddings": a.context,
    }
    (out / "config.json").write_text(json.dumps(written, indent=2) + "\n")
    params = sum(t.numel() for t in model.parameters())
    print(f"wrote {out}: {a.layers} layers, {a.heads} query / {a.kv_heads} KV heads of 128, "
          f"{params / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
