#!/usr/bin/env python3
"""PyTorch baseline for bench/attention_decode: scaled_dot_product_attention decode timings.

For each shape "batch:ctx:kv_heads:group" it times F.scaled_dot_product_attention(q, k, v,
enable_gqa=True) with q [batch, kv_heads * group, 1, head_dim] and dense k, v
[batch, kv_heads, ctx, head_dim], all bf16 on the GPU, the way bench_attention_decode times
DecodeAttention: N launches captured in one CUDA graph, replayed, timed with CUDA events, divided
by N; the K/V tensors rotate through enough copies (>= 3x the L2 cache) that reads come from HBM.
Prints one JSON object per line and shape: {"batch", "ctx", "kv_heads", "group", "us",
"launches", "replicas", "backend"} or {..., "skip": reason}. Run by bench_attention_decode
--torch python3, or alone:

  python3 bench/attention_decode_torch.py --shapes 8:4096:1:8,64:32768:8:8 [--head_dim 128]
"""
import argparse
import json
import math
import statistics
import sys


def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        if not item:
            continue
        batch, ctx, kv_heads, group = (int(x) for x in item.split(":"))
        shapes.append((batch, ctx, kv_heads, group))
    return shapes


def sdpa_context(backend):
    """A context manager restricting SDPA to one backend, or a no-op for 'default'."""
    import contextlib

    if backend == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }
    return sdpa_kernel([table[backend]])


def time_shape(torch, F, shape, head_dim, l2_bytes, launches, min_ms, backend):
    batch, ctx, kv_heads, group = shape
    result = {"batch": batch, "ctx": ctx, "kv_heads": kv_heads, "group": group}
    kv_bytes = batch * ctx * kv_heads * head_dim * 2 * 2
    replicas = max(1, math.ceil(3 * l2_bytes / kv_bytes))
    free, _ = torch.cuda.mem_get_info()
    need = replicas * kv_bytes + (512 << 20)
    if need > free:
        result["skip"] = "needs %.2f GiB, %.2f GiB free" % (need / 2**30, free / 2**30)
        return result
    dev = torch.device("cuda")
    bf16 = torch.bfloat16
    def randn(*shape):
        t = torch.empty(*shape, device=dev, dtype=bf16)
        for i in range(shape[0]):  # per sequence: keeps each fill under 2^31 elements
            t[i].normal_()
        return t

    q = randn(batch, kv_heads * group, 1, head_dim)
    ks = [randn(batch, kv_heads, ctx, head_dim) for _ in range(replicas)]
    vs = [randn(batch, kv_heads, ctx, head_dim) for _ in range(replicas)]
    n = replicas * math.ceil(launches / replicas)
    try:
        with sdpa_context(backend):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for i in range(3):
                    F.scaled_dot_product_attention(q, ks[i % replicas], vs[i % replicas],
                                                   enable_gqa=True)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for i in range(n):
                    F.scaled_dot_product_attention(q, ks[i % replicas], vs[i % replicas],
                                                   enable_gqa=True)
    except Exception as e:  # a backend that does not take this shape
        result["skip"] = "sdpa failed: %s" % str(e).splitlines()[0][:200]
        return result
    graph.replay()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    stop.record()
    stop.synchronize()
    first_ms = start.elapsed_time(stop)
    reps = max(3, min(50, math.ceil(min_ms / max(first_ms, 1e-3))))
    times = []
    for _ in range(reps):
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    result.update({"us": statistics.median(times) * 1000.0 / n, "launches": n,
                   "replicas": replicas, "backend": backend})
    del graph, q, ks, vs
    torch.cuda.empty_cache()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", required=True, help="batch:ctx:kv_heads:group,...")
    parser.add_argument("--head_dim", type=int, default=128)
    parser.add_argument("--launches", type=int, default=20, help="launches per CUDA graph")
    parser.add_argument("--min_ms", type=float, default=200.0, help="timed replay time")
    parser.add_argument("--backend", default="default",
                        choices=["default", "flash", "efficient", "math", "cudnn"])
    args = parser.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(json.dumps({"error": "cannot import torch: %s" % e}), flush=True)
        return 1
    if not torch.cuda.is_available():
        print(json.dumps({"error": "torch sees no CUDA device"}), flush=True)
        return 1
    props = torch.cuda.get_device_properties(0)
    l2_bytes = getattr(props, "L2_cache_size", 0) or (60 << 20)
    print(json.dumps({"info": "torch %s on %s" % (torch.__version__, props.name)}), flush=True)
    for shape in parse_shapes(args.shapes):
        print(json.dumps(time_shape(torch, F, shape, args.head_dim, l2_bytes, args.launches,
                                    args.min_ms, args.backend)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
