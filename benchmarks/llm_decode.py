"""Per-token decode latency, tokens/s and memory of LLMs on today's GPUs: a table (no GPU needed).

    python benchmarks/llm_decode.py [--dtype bfloat16] [--weights-dtype int4] [--batch 1]

Each cell is one `costplan analyze hf:MODEL --phase decode --context N --hw GPU`: the fused runtime
(kernels as a serving engine runs them, CUDA graphs aside), a static KV cache of N tokens read whole
by every step. Memory is weights + KV cache + the largest layer's activations; a cell that does not
fit the GPU's memory is marked (its latency is for a GPU with that memory). Mixtral counts the 2
routed experts of 8 per token. The figures are predictions: benchmarks/gpu_published.py compares the
model against published decode rows.
"""

from __future__ import annotations

import argparse
import warnings

warnings.filterwarnings("ignore")

from costplan.api import analyze, load_graph  # noqa: E402
from costplan.spellings import traced_dtype  # noqa: E402

MODELS = ("hf:llama-3.1-8b", "hf:mixtral-8x7b", "hf:llama-3.1-70b")
GPUS = ("h100", "a100-80gb", "rtx4090")
CONTEXTS = (128, 2048, 8192)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--weights-dtype")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    print(f"decode at batch {args.batch}, {args.dtype}" + (f", weights {args.weights_dtype}" if args.weights_dtype else ""))
    print(f"{'model':18s} {'context':>7s} " + " ".join(f"{g + ' ms':>12s} {'tok/s':>7s}" for g in GPUS)
          + f" {'memory GB':>9s}  does not fit")
    for model in MODELS:
        for context in CONTEXTS:
            graph = load_graph(model, phase="decode", context=context, batch=args.batch,
                               dtype=traced_dtype(args.dtype))
            cells, misses, memory = [], [], 0.0
            for gpu in GPUS:
                t = analyze(graph, hw=gpu, dtype=args.dtype, weights_dtype=args.weights_dtype).totals
                cells.append(f"{t['latency_ms']:12.2f} {t['tokens_per_s']:7.1f}")
                memory = t["memory_bytes"] / 1e9
                if t["fits"] is False:
                    misses.append(gpu)
            print(f"{model[3:]:18s} {context:7d} " + " ".join(cells) + f" {memory:9.1f}  {', '.join(misses) or '-'}",
                  flush=True)


if __name__ == "__main__":
    main()
