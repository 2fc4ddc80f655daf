"""Matrix-multiply throughput of JAX (XLA:CPU) and PyTorch on the encoder's own shapes.

    python -m benchmarks.gemm --json=FILE [--tokens=1280] [--hidden=384] [--intermediate=1536]

The training and inference steps of the joint model are dominated by these products (the
attention projections [T, H] x [H, H] and the feed-forward [T, H] x [H, 4H], [T, 4H] x [4H, H]),
so their GFLOP/s bound what either framework can reach on this machine: when both run them at
the same speed, a whole-step speedup must come from doing less arithmetic, not from faster
arithmetic. Same threads for both (all CPUs), float32, best of 20 repetitions after warm-up.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from jointre_jax import cli

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    flags.DEFINE_string("json", None, "Write the results to this JSON file.")
    flags.DEFINE_integer("tokens", 1280, "Rows: batch 32 x length 40 wordpieces.")
    flags.DEFINE_integer("hidden", 384, "Hidden size (MiniLM: 384, BERT-base: 768).")
    flags.DEFINE_integer("intermediate", 1536, "Feed-forward size.")


def best_seconds(run, repeats: int = 20) -> float:
    """Fastest of ``repeats`` calls of ``run`` (after one warm-up call)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def measure(tokens: int, hidden: int, inner: int) -> dict:
    """GFLOP/s of JAX and PyTorch for each encoder product shape (m, k, n)."""
    import torch

    torch.set_num_threads(os.cpu_count())
    matmul = jax.jit(jnp.matmul)
    rows = []
    for m, k, n in [(tokens, hidden, hidden), (tokens, hidden, inner), (tokens, inner, hidden)]:
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
        flop = 2 * m * k * n
        jax_s = best_seconds(lambda ja=ja, jb=jb: matmul(ja, jb).block_until_ready())
        torch_s = best_seconds(lambda ta=ta, tb=tb: torch.matmul(ta, tb))
        rows.append(
            {"shape": [m, k, n], "jax_gflops": flop / jax_s / 1e9,
             "torch_gflops": flop / torch_s / 1e9, "jax_over_torch": torch_s / jax_s}
        )  # fmt: skip
    return {
        "threads": os.cpu_count(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "products": rows,
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    results = measure(FLAGS.tokens, FLAGS.hidden, FLAGS.intermediate)
    text = json.dumps(results, indent=1)
    if FLAGS.json:
        pathlib.Path(FLAGS.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "gemm")
