"""Whole-epoch training speed, compilation included: packed rows vs length buckets.

    python -m benchmarks.epoch_speed --config=configs/minilm_m2.py --json=FILE [--steps=N]

Each mode runs in a fresh process with every compilation cache off, so both pay their
compilations as a first run does: the process builds the run as ``train`` does (data, model,
TrainState from the pre-trained encoder), then trains through one epoch plan (the first
``--steps`` batches of it, if given) and times

* ``first_step_seconds``: process start to the first finished step (what a user waits for);
* ``epoch_seconds``: the first step's start to the last step's end, compilation included;
* ``criteria_per_s``: the epoch's criteria over ``epoch_seconds``; ``train_shapes``.

The JSON holds each mode (``--modes``, default both) and ``packed_over_bucketed``, the ratio of
criteria/s. The modes run one after the other on the same machine; run nothing else meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from jointre_jax import cli

FLAGS = flags.FLAGS


def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
    flags.DEFINE_string("json", None, "Write the results to this JSON file.")
    flags.DEFINE_integer("steps", 0, "Train only the first N batches of the epoch (0: all).")
    flags.DEFINE_list("modes", ["bucketed", "packed"], "Modes to time, each in its own process.")
    flags.DEFINE_enum("mode", "", ["", "packed", "bucketed"], "Internal: run one mode here.")


def one_epoch(config, limit: int) -> dict:
    """Trains one epoch plan of ``config`` in this process; the timings of the docstring."""
    import jax

    from benchmarks.throughput import process_start
    from jointre_jax import parallel, runtime, steps
    from jointre_jax import state as state_lib
    from jointre_jax.data.corpus import load_split, make_encoder
    from jointre_jax.data.packing import make_batcher

    encoder = make_encoder(config)
    data = load_split(config, config.data.train_split, encoder, progress=False)
    runtime.resolve_sizes(config, data.examples)
    bert, weights_dir = runtime.encoder_config(config)
    batcher = make_batcher(config, data.examples, encoder.scheme, training=True)
    plan = batcher.epoch_plan(0)[: limit or None]
    model = runtime.create_model(config, encoder.scheme, data.schema.num_relation_labels, bert)
    mesh = runtime.make_mesh(config)
    state = state_lib.create_state(config, model, weights_dir, len(plan), mesh)
    train = steps.jit_train_step(mesh, state, runtime.loss_options(config, encoder.scheme))
    sharding = parallel.batch_sharding(mesh)
    rng = jax.random.key(0)
    first = None
    criteria = sum(len(row) for p in plan for row in p.segments())
    start = time.perf_counter()
    for batch in batcher.iterate(plan):
        state, metrics = train(state, parallel.global_batch(batch, sharding), rng)
        if first is None:
            jax.block_until_ready(metrics)
            first = time.time() - process_start()
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    return {
        "first_step_seconds": first,
        "epoch_seconds": seconds,
        "steps": len(plan),
        "criteria": criteria,
        "criteria_per_s": criteria / seconds,
        "train_shapes": train._cache_size(),
        "rows_per_batch": int(plan[0].indices.shape[0]),
        "row_length": sorted({p.length for p in plan}),
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    if FLAGS.mode:  # a child: one mode, JSON on the last line of stdout
        config.data.packing = FLAGS.mode == "packed"
        print(json.dumps(one_epoch(config, FLAGS.steps)))
        return
    out = cli.prepare_output(FLAGS.json, "json") if FLAGS.json else None
    env = {**os.environ, "JOINTRE_COMPILATION_CACHE": "", "JAX_ENABLE_COMPILATION_CACHE": "0"}
    results = {"config": sys.argv[1:], "steps": FLAGS.steps}
    for mode in FLAGS.modes:
        command = [sys.executable, "-m", "benchmarks.epoch_speed", *sys.argv[1:], f"--mode={mode}"]
        command = [c for c in command if not c.startswith(("--json", "--modes"))]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{mode} run failed:\n{done.stderr[-3000:]}")
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        print(mode, json.dumps(results[mode]), file=sys.stderr)
    if {"packed", "bucketed"} <= set(results):
        results["packed_over_bucketed"] = (
            results["packed"]["criteria_per_s"] / results["bucketed"]["criteria_per_s"]
        )
    text = json.dumps(results, indent=1)
    if out is not None:
        out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "epoch_speed", required=("config",))
