"""`make demo`: trains briefly, prints the test scores and a few extracted criteria.

jointre demo --config=configs/demo.py --workdir=workdirs/demo
"""

import pathlib

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jointre_jax import cli, inference, train
from jointre_jax.data.corpus import load_split
from jointre_jax.data.sample import write_sample_corpus, write_tiny_encoder

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    config_flags.DEFINE_config_file("config", "configs/demo.py", "Config file.")
    flags.DEFINE_string("workdir", "workdirs/demo", "Run directory.")
    flags.DEFINE_integer("show", 4, "Test criteria to print with their extractions.")


def prepare(config, workdir: pathlib.Path) -> str:
    """Fills in the shipped sample when the config has no corpus; returns what is used."""
    if config.data.dir:
        return f"Chia ({config.data.dir}) with the encoder {config.model.encoder}"
    corpus = write_sample_corpus(workdir / "sample")
    config.data.dir = str(corpus)
    config.model.encoder = str(write_tiny_encoder(workdir / "sample_encoder", corpus))
    return (
        "the project's own annotated sample (jointre_jax/assets/demo_criteria.txt) with a small "
        "randomly initialised encoder: ../shared (Chia, MiniLM) was not found"
    )


def show_extractions(workdir: pathlib.Path, count: int) -> None:
    """Prints ``count`` test criteria with the entities and relations the model extracts."""
    config, predictor, encoder = inference.load_run(workdir)
    examples = load_split(config, config.data.test_split, encoder, progress=False).examples
    chosen = [ex for ex in examples if len(ex.entities) >= 3][:count]
    schema = encoder.schema
    for index, prediction in sorted(predictor.predict(chosen)):
        example = chosen[index]
        entities = prediction.entities
        print(f"\n  {example.text}")
        mentions = [" ... ".join(example.text[a:b] for a, b in e.char_spans) for e in entities]
        for e, mention in zip(entities, mentions, strict=True):
            print(f"    [{schema.entity_types[e.label]}] {mention}")
        for h, t, label, score in prediction.relations:
            head, tail = mentions[h], mentions[t]
            print(f"    {schema.relation_labels[label]}({head} -> {tail})  p={score:.2f}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    config, workdir = FLAGS.config, pathlib.Path(FLAGS.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    used = prepare(config, workdir)
    print(f"demo: training on {used}")
    results = train.train_and_evaluate(config, workdir)
    print(f"\ntest scores (best epoch {results['best_epoch']}):")
    rows = [
        ("NER", "corpus gold", results["corpus"]["ner"]),
        ("RE end-to-end", "corpus gold", results["corpus"]["re_e2e"]),
        ("NER", "encoded gold", results["ner"]),
        ("RE gs-based", "encoded gold", results["re_gs"]),
        ("RE end-to-end", "encoded gold", results["re_e2e"]),
    ]
    for name, gold, r in rows:
        print(
            f"  {name:14s} {gold:12s} P {r['precision']:.3f}  R {r['recall']:.3f}  F1 {r['f1']:.3f}"
        )
    print(f"\nextractions on test criteria (all scores in {workdir / 'metrics.json'}):")
    show_extractions(workdir, FLAGS.show)


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "demo")
