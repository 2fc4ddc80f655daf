"""Training and inference throughput of the joint model: JAX vs the PyTorch reference, and
packed vs length-bucketed vs fixed-length batches, measured side by side in one run.

    python -m benchmarks.throughput --config=configs/minilm_m2.py --json=FILE [--train_batches=N]
        [--infer_batches=N] [--rounds=R] [--encoder_size=config|base] [--skip_torch]

Batches are drawn at random (fixed seed) from the real training epoch plan of the config's
training split (packed rows with ``data.packing``, else length buckets), so their length mix is
the corpus's. Each side first runs every batch once (compilation, warm-up), then the timed
passes alternate JAX, PyTorch, JAX, PyTorch, ... and the fastest pass of each side counts.
Both sides use the same batches, the same model (see benchmarks/torch_reference.py and its
test) and, on a CPU, the same number of threads. On a GPU the PyTorch side runs there too, with
bf16 autocast when the config computes in bf16 and fused AdamW.

The JSON holds ``train`` and ``infer`` (sentences/s, steps/s, real tokens/s for each side and
``jax_over_torch``, the ratio of sentences/s), ``packing`` (with ``data.packing``: the real-token
fraction of the packed epoch, rows per batch, and the sentences/s of length-bucketed batches
drawn from the bucketed epoch plan, ``speedup_over_buckets``; with PyTorch, its sentences/s on
those bucketed batches and ``jax_packed_over_torch_bucketed``), ``bucketing`` (real-token fraction
of the bucketed epoch, sentences/s of its batches padded to the longest bucket, ``speedup``),
``compile`` (``first_step_seconds`` from process start to the first finished training step,
``total_seconds`` of compilation over the run, and the number of compiled shapes), ``memory``,
``flops`` (model FLOPs of the matmuls, and MFU on a GPU whose peak is known), and the machine
and versions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import resource
import shutil
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jointre_jax import cli, parallel, runtime, steps
from jointre_jax import state as state_lib
from jointre_jax.data.batching import Batcher, PlannedBatch, padding_stats
from jointre_jax.data.corpus import load_split, make_encoder
from jointre_jax.data.packing import make_batcher
from jointre_jax.model.bert import BertConfig
from jointre_jax.model.pretrained import resolve_encoder

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
    flags.DEFINE_string("json", None, "Write the results to this JSON file.")
    flags.DEFINE_integer("train_batches", 12, "Training batches per timed pass.")
    flags.DEFINE_integer("infer_batches", 16, "Inference batches per timed pass.")
    flags.DEFINE_integer("rounds", 2, "Timed passes per side (the fastest counts).")
    flags.DEFINE_integer("threads", 0, "PyTorch intra-op threads (0 = CPU count).")
    flags.DEFINE_enum(
        "encoder_size", "config", ["config", "base"],
        "config: the config's encoder; base: a BERT-base shaped encoder (random weights, the "
        "config encoder's vocabulary), for GPU figures without a hub download.",
    )  # fmt: skip
    flags.DEFINE_bool("skip_torch", False, "Time JAX only.")
    flags.DEFINE_bool("fixed", True, "Also time the same batches padded to full length.")
    flags.DEFINE_bool(
        "buckets", True, "Packed configs: also time batches of the length-bucketed plan."
    )


# Dense bf16 peak FLOP/s of known accelerators, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def matmul_flops(bert: BertConfig, lengths, rows: int, config, train_step: bool) -> float:
    """Model FLOPs of the matmuls of one pass over batches of ``rows`` x ``lengths[i]``.

    Counts the encoder's projections, feed-forward and attention products, the NER layer, the
    head/tail layers and the pair scorer; a training step counts 3x the forward pass.
    Embedding lookups, softmax and layer norms are not counted.
    """
    h, inner, layers = bert.hidden_size, bert.intermediate_size, bert.num_hidden_layers
    d = config.model.pair_hidden_dim
    feats = h + config.model.ner_label_embedding_dim
    relations = len(config.data.relation_types) + 1
    tags = 2 * len(config.data.entity_types) + 1
    total = 0.0
    for length in lengths:
        tokens = rows * length
        encoder = layers * (2 * tokens * (4 * h * h + 2 * h * inner) + 4 * rows * length**2 * h)
        heads = 2 * tokens * h * tags + 2 * 2 * tokens * feats * d
        if config.model.re_option == "m1":
            pairs = 2 * 2 * tokens * d * relations
        else:  # contraction order of the einsum: (h U) first, then with t
            pairs = 2 * tokens * d * d * relations + 2 * rows * length**2 * d * relations
        total += encoder + heads + pairs
    return total * (3 if train_step else 1)


def base_encoder_dir(config) -> pathlib.Path:
    """A temporary encoder directory: BERT-base's shape with the config encoder's vocabulary."""
    source = resolve_encoder(str(config.model.encoder))
    target = pathlib.Path(tempfile.mkdtemp(prefix="bert_base_"))
    for path in source.iterdir():
        if path.suffix in (".txt", ".json") and path.name != "config.json":
            shutil.copy(path, target / path.name)
    vocab = json.loads((source / "config.json").read_text())["vocab_size"]
    fields = dataclasses.asdict(BertConfig(vocab_size=vocab))
    (target / "config.json").write_text(json.dumps({"model_type": "bert", **fields}))
    return target


def sample_batches(batcher: Batcher, plan, count: int, seed: int = 0) -> list[PlannedBatch]:
    """``count`` batches drawn without replacement from ``plan``: batches without an empty row,
    or any batches when a plan (a tiny split) has none."""
    full = [p for p in plan if all(p.segments())] or list(plan)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(full), size=min(count, len(full)), replace=False)
    return [full[i] for i in sorted(chosen)]


def _rate(batches, seconds: float, real_tokens: int) -> dict:
    rows = sum(int(b["segment_ids"].max(axis=1).sum()) for b in batches)  # criteria
    return {
        "seconds": seconds,
        "steps_per_s": len(batches) / seconds,
        "sentences_per_s": rows / seconds,
        "real_tokens_per_s": real_tokens / seconds,
    }


def process_start() -> float:
    """Wall-clock time at which this process started (Linux: /proc; elsewhere: now)."""
    try:
        stat = pathlib.Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(pathlib.Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + int(stat[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


class JaxSide:
    """The jitted train and predict steps of the config's model on all local devices."""

    def __init__(self, config, scheme, schema, bert, weights_dir):
        self.model = runtime.create_model(config, scheme, schema.num_relation_labels, bert)
        self.mesh = runtime.make_mesh(config)
        self.initial = state_lib.create_state(config, self.model, weights_dir, 10_000, self.mesh)
        options = runtime.loss_options(config, scheme)
        self.train_fn = steps.jit_train_step(self.mesh, self.initial, options)
        self.predict_fn = steps.jit_predict_step(self.mesh, self.initial.params, self.model)
        self.sharding = parallel.batch_sharding(self.mesh)
        self.rng = jax.random.key(0)
        self.state = None
        self.first_step_seconds = None

    def params_copy(self):
        return jax.tree.map(lambda x: x.copy(), self.initial)

    def train_pass(self, batches) -> float:
        state = self.state if self.state is not None else self.params_copy()
        start = time.perf_counter()
        for batch in batches:
            state, metrics = self.train_fn(
                state, parallel.global_batch(batch, self.sharding), self.rng
            )
            if self.first_step_seconds is None:  # the first finished step of the process
                jax.block_until_ready(metrics)
                self.first_step_seconds = time.time() - process_start()
        jax.block_until_ready((state, metrics))
        self.state = state
        return time.perf_counter() - start

    def infer_pass(self, batches) -> float:
        start = time.perf_counter()
        for batch in batches:
            out = self.predict_fn(self.initial.params, parallel.global_batch(batch, self.sharding))
            jax.device_get(out)  # predictions reach the host, as extraction needs them
        return time.perf_counter() - start


class TorchSide:
    """The PyTorch reference with the same initial parameters, AdamW like optax's; on the GPU
    when there is one (bf16 autocast for a bf16 config, fused AdamW)."""

    def __init__(self, config, scheme, schema, bert, jax_params, threads: int):
        import torch

        from benchmarks import torch_reference as ref

        torch.set_num_threads(threads)
        self.torch, self.ref = torch, ref
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = ref.TorchJointModel(
            ref.bert_config(bert), scheme.num_classes, schema.num_relation_labels,
            config.model.re_option, config.model.ner_label_embedding_dim,
            config.model.pair_hidden_dim, config.model.dropout_rate,
        )  # fmt: skip
        ref.load_flax_params(self.model, jax_params)
        self.model.to(self.device)
        bf16 = self.device == "cuda" and config.model.compute_dtype == "bfloat16"
        self.autocast = lambda: torch.autocast(self.device, torch.bfloat16, enabled=bf16)  # noqa: E731
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.optim.learning_rate,
            weight_decay=config.optim.weight_decay, fused=self.device == "cuda",
        )  # fmt: skip
        self.clip = config.optim.grad_clip_norm

    def _sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def train_pass(self, batches) -> float:
        self.model.train()
        self._sync()
        start = time.perf_counter()
        for batch in batches:
            batch = self.ref.to_torch(batch, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss = self.ref.joint_loss(*self.model(batch, "gold"), batch)
            loss.backward()
            self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
        self._sync()
        return time.perf_counter() - start

    def infer_pass(self, batches) -> float:
        self.model.eval()
        self._sync()
        start = time.perf_counter()
        with self.torch.inference_mode(), self.autocast():
            for batch in batches:
                ner_logits, re_logits = self.model(
                    self.ref.to_torch(batch, self.device), "predicted"
                )
                ner_logits.argmax(-1).cpu().numpy()
                probs = re_logits.float().softmax(-1)
                probs.max(-1).values.cpu().numpy(), probs.argmax(-1).cpu().numpy()
        return time.perf_counter() - start


def _fastest(side_passes: dict, rounds: int) -> dict:
    """Runs the passes of every side ``rounds`` times, interleaved; the fastest time of each."""
    best = {name: float("inf") for name in side_passes}
    for _ in range(rounds):
        for name, run in side_passes.items():
            best[name] = min(best[name], run())
    return best


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(
    config,
    train_batches: int,
    infer_batches: int,
    rounds: int,
    threads: int,
    encoder_size: str = "config",
    with_torch: bool = True,
    fixed: bool = True,
    buckets: bool = True,
) -> dict:
    """All measurements for ``config``; returns the JSON-ready dict (see module docstring)."""
    threads = threads or os.cpu_count()
    encoder = make_encoder(config)
    data = load_split(config, config.data.train_split, encoder, progress=False)
    if encoder_size == "base":
        config.model.encoder, config.model.pretrained = str(base_encoder_dir(config)), False
    bert, weights_dir = runtime.encoder_config(config)
    runtime.resolve_sizes(config, data.examples)
    boundaries, size = config.data.bucket_boundaries, config.data.batch_size
    scheme, packed = encoder.scheme, bool(config.data.packing)
    compare = packed and buckets  # packed rows timed against the bucketed plan
    slots = int(config.model.max_entities)
    buckets = Batcher(data.examples, boundaries, size, config.seed, scheme, slots)
    bucket_plan = buckets.epoch_plan(0)
    batcher = make_batcher(config, data.examples, scheme, training=True)
    plan = batcher.epoch_plan(0)
    planned = sample_batches(batcher, plan, train_batches)
    main = [batcher.build(p) for p in planned]  # what training runs: packed rows or buckets
    bucket_planned = sample_batches(buckets, bucket_plan, train_batches)
    bucketed = [buckets.build(p) for p in bucket_planned]
    padded = [buckets.build(PlannedBatch(boundaries[-1], p.indices)) for p in bucket_planned]
    eval_batcher = make_batcher(config, data.examples, scheme, training=False)
    infer_planned = sample_batches(eval_batcher, eval_batcher.eval_plan(), infer_batches, 1)
    infer = [eval_batcher.build(p) for p in infer_planned]
    real = lambda batches: int(sum(b["input_mask"].sum() for b in batches))  # noqa: E731
    real_train, real_bucketed, real_infer = real(main), real(bucketed), real(infer)

    jax_side = JaxSide(config, scheme, data.schema, bert, weights_dir)
    compile_start = time.perf_counter()
    jax_side.train_pass(main)
    compile_train = time.perf_counter() - compile_start
    compile_start = time.perf_counter()
    jax_side.infer_pass(infer)
    compile_infer = time.perf_counter() - compile_start
    rss_jax = _peak_rss_mb()
    passes = {
        "jax_train": lambda: jax_side.train_pass(main),
        "jax_infer": lambda: jax_side.infer_pass(infer),
    }
    torch_side = None
    if with_torch:
        torch_side = TorchSide(config, scheme, data.schema, bert, jax_side.initial.params, threads)
        torch_side.train_pass(main[:2])  # warm-up: allocator, kernels
        torch_side.infer_pass(infer[:2])
        passes["torch_train"] = lambda: torch_side.train_pass(main)
        passes["torch_infer"] = lambda: torch_side.infer_pass(infer)
        if compare:  # PyTorch on the bucketed batches too: each side on its own best path
            torch_side.train_pass(bucketed[:2])
            passes["torch_train_bucketed"] = lambda: torch_side.train_pass(bucketed)
    compile_other = 0.0
    if compare:  # the bucketed path side by side
        compile_start = time.perf_counter()
        jax_side.train_pass(bucketed)
        compile_other += time.perf_counter() - compile_start
        passes["jax_train_bucketed"] = lambda: jax_side.train_pass(bucketed)
    if fixed:
        compile_start = time.perf_counter()
        jax_side.train_pass(padded)  # compile the full-length shape
        compile_other += time.perf_counter() - compile_start
        passes["jax_train_fixed"] = lambda: jax_side.train_pass(padded)
    best = _fastest(passes, rounds)
    compile_other -= best.get("jax_train_bucketed", 0.0) + best.get("jax_train_fixed", 0.0)

    results = {
        "config": {
            "encoder": str(config.model.encoder),
            "encoder_size": encoder_size,
            "hidden": bert.hidden_size,
            "layers": bert.num_hidden_layers,
            "method": config.model.method,
            "re_option": config.model.re_option,
            "compute_dtype": config.model.compute_dtype,
            "batch_size": size,
            "packing": packed,
            "bucket_boundaries": list(boundaries),
            "train_batches": len(main),
            "infer_batches": len(infer),
            "rounds": rounds,
            "torch_threads": threads,
            "attention": "jax.nn.dot_product_attention (XLA default) at inference; explicit "
            "einsum softmax with attention dropout in training",
        },  # fmt: skip
        "machine": machine(),
        "train": {"jax": _rate(main, best["jax_train"], real_train)},
        "infer": {"jax": _rate(infer, best["jax_infer"], real_infer)},
        "compile": {
            "first_step_seconds": jax_side.first_step_seconds,
            "total_seconds": compile_train
            - best["jax_train"]
            + compile_infer
            - best["jax_infer"]
            + compile_other,
            "train_seconds": compile_train - best["jax_train"],
            "infer_seconds": compile_infer - best["jax_infer"],
            "train_shapes": jax_side.train_fn._cache_size(),
            "infer_shapes": jax_side.predict_fn._cache_size(),
        },
        "memory": {"peak_rss_mb_after_jax": rss_jax, "peak_rss_mb_end": _peak_rss_mb()},
    }
    if with_torch:
        for key in ("train", "infer"):
            batches, tokens = (main, real_train) if key == "train" else (infer, real_infer)
            results[key]["torch"] = _rate(batches, best[f"torch_{key}"], tokens)
            results[key]["jax_over_torch"] = (
                results[key]["jax"]["sentences_per_s"] / results[key]["torch"]["sentences_per_s"]
            )
    stats = padding_stats(buckets, bucket_plan)
    results["bucketing"] = {
        "real_token_fraction": stats["real_token_fraction"],
        "fixed_real_token_fraction": 1 - stats["fixed_padding_waste"],
        "sampled_real_token_fraction": real_bucketed / sum(b["input_ids"].size for b in bucketed),
    }
    if packed:
        packing = padding_stats(batcher, plan)
        results["packing"] = {
            "real_token_fraction": packing["real_token_fraction"],
            "rows_per_batch": int(planned[0].indices.shape[0]) if planned else 0,
            "row_length": int(plan[0].length) if plan else 0,
        }
    if compare:
        bucket_rate = _rate(bucketed, best["jax_train_bucketed"], real_bucketed)
        results["packing"]["bucketed"] = bucket_rate
        results["packing"]["speedup_over_buckets"] = (
            results["train"]["jax"]["sentences_per_s"] / bucket_rate["sentences_per_s"]
        )
        if with_torch:
            torch_rate = _rate(bucketed, best["torch_train_bucketed"], real_bucketed)
            results["packing"]["torch_bucketed"] = torch_rate
            results["packing"]["jax_packed_over_torch_bucketed"] = (
                results["train"]["jax"]["sentences_per_s"] / torch_rate["sentences_per_s"]
            )
    if fixed:
        results["bucketing"]["fixed"] = _rate(padded, best["jax_train_fixed"], real_bucketed)
        reference = best.get("jax_train_bucketed", best["jax_train"])
        results["bucketing"]["speedup"] = best["jax_train_fixed"] / reference
    flops = sum(
        matmul_flops(bert, [b["input_ids"].shape[1]], b["input_ids"].shape[0], config, True)
        for b in main
    )
    results["flops"] = {"train_pass": flops, "train_per_s": flops / best["jax_train"]}
    peak = _peak_flops()
    if peak:
        results["flops"]["peak"] = peak
        results["flops"]["train_mfu"] = flops / best["jax_train"] / peak
        device_memory = jax.devices()[0].memory_stats() or {}
        results["memory"]["device_peak_bytes"] = device_memory.get("peak_bytes_in_use")
    return results


def _peak_flops() -> float | None:
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_FLOPS.items() if k in kind), None)


def machine() -> dict:
    import flax
    import transformers

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "transformers": transformers.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def print_and_save(results: dict, path: str | None) -> None:
    """Prints ``results`` as JSON and, if ``path`` is given, writes it there too."""
    text = json.dumps(results, indent=1)
    if path:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(text + "\n")
    print(text)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.json:
        cli.prepare_output(FLAGS.json, "json")  # before the measurements
    results = run(
        FLAGS.config, FLAGS.train_batches, FLAGS.infer_batches, FLAGS.rounds,
        FLAGS.threads, FLAGS.encoder_size, not FLAGS.skip_torch, FLAGS.fixed, FLAGS.buckets,
    )  # fmt: skip
    print_and_save(results, FLAGS.json)


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "throughput", required=("config",))
