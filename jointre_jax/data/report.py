"""Data report: what each split holds, keeps and drops, and the padding of its batches.

The program is :mod:`jointre_jax.tools.report` (``jointre report --config=...``).

For entities and relations of the kept types, ``raw = kept + sum(dropped)`` exactly (OR groups
expanded into binary relations before counting). Types the schema leaves out are listed under
``excluded``; BRAT lines the model does not use under ``ignored_lines``; problems skipped in
lenient mode under ``skipped`` with their ``path:line`` messages under ``problems``.
"""

from __future__ import annotations

from jointre_jax.data.batching import padding_stats
from jointre_jax.data.corpus import load_split, make_encoder
from jointre_jax.data.packing import PackedBatcher, make_batcher


def build_report(config, splits=None, progress: bool = False) -> dict:
    """The report as a dict: ``{"config": {...}, "splits": {name: {...}}}``.

    Each split: documents, criteria, examples, windowed_criteria, entities and relations
    (raw / kept / dropped by reason), excluded, ignored_lines, skipped, repaired, problems and
    ``padding`` (see batching.padding_stats) of its batches as the config makes them (packed
    rows with ``data.packing``, else length buckets; ``batch_size``: rows of a batch):
    training batches (epoch 0) for the train split, evaluation batches for the others.
    """
    data = config.data
    splits = list(splits or [data.train_split, data.eval_split, data.test_split])
    encoder = make_encoder(config)
    report = {
        "config": {
            "data_dir": str(data.dir),
            "encoder": str(config.model.encoder),
            "max_length": int(data.max_length),
            "context_length": int(data.get("context_length", 0)),
            "bucket_boundaries": list(data.bucket_boundaries),
            "ner_decoder": encoder.scheme.name,
            "anchor": str(data.anchor),
            "overlap_policy": str(data.overlap_policy),
            "max_span_width": int(config.model.max_span_width),
            "group_expansion": str(data.group_expansion),
            "lenient": bool(data.lenient),
            "entity_types": list(encoder.schema.entity_types),
            "relation_labels": list(encoder.schema.relation_labels),
        },
        "splits": {},
    }
    for split in splits:
        loaded = load_split(config, split, encoder, progress=progress)
        entry = loaded.accounting.to_dict()
        is_train = split == data.train_split
        batcher = make_batcher(config, loaded.examples, encoder.scheme, training=is_train)
        plan = batcher.epoch_plan(0) if is_train else batcher.eval_plan()
        entry["max_entities_per_example"] = max(
            (len(ex.entities) for ex in loaded.examples), default=0
        )
        entry["padding"] = {
            "packed": isinstance(batcher, PackedBatcher),
            "batch_size": batcher.batch_size,  # rows of a batch
            "plan": "train (epoch 0)" if is_train else "eval",
            **padding_stats(batcher, plan),
        }
        report["splits"][split] = entry
    return report


def _table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(
        str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
        for i, (c, w) in enumerate(zip(r, widths, strict=True))
    )
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def format_report(report: dict) -> str:
    """Readable tables of the same content as the JSON report."""
    splits = report["splits"]
    names = list(splits)
    out = [f"corpus {report['config']['data_dir']}  encoder {report['config']['encoder']}", ""]
    rows = [
        (key, *(splits[s][key] for s in names))
        for key in (
            "documents",
            "criteria",
            "examples",
            "windowed_criteria",
            "max_entities_per_example",
        )
    ]
    out += [_table(rows, ("", *names)), ""]
    for kind in ("entities", "relations"):
        reasons = sorted({r for s in names for r in splits[s][kind]["dropped"]})
        rows = [
            ("raw", *(splits[s][kind]["raw"] for s in names)),
            ("kept", *(splits[s][kind]["kept"] for s in names)),
        ]
        rows += [
            (f"  dropped: {r}", *(splits[s][kind]["dropped"].get(r, 0) for s in names))
            for r in reasons
        ]
        out += [_table(rows, (kind, *names)), ""]
    for kind in ("entities", "relations"):
        types = sorted({t for s in names for t in splits[s]["excluded"][kind]})
        rows = [(t, *(splits[s]["excluded"][kind].get(t, 0) for s in names)) for t in types]
        if rows:
            out += [_table(rows, (f"excluded {kind} (types left out)", *names)), ""]
    for key in ("ignored_lines", "skipped", "repaired"):
        found = sorted({t for s in names for t in splits[s][key]})
        rows = [(t, *(splits[s][key].get(t, 0) for s in names)) for t in found]
        if rows:
            out += [_table(rows, (key, *names)), ""]
    pad = [
        (key, *(splits[s]["padding"][key] for s in names))
        for key in ("plan", "packed", "batch_size", "batches", "real_tokens", "padded_slots")
    ]
    pad += [
        (key, *(f"{splits[s]['padding'][key]:.1%}" for s in names))
        for key in ("real_token_fraction", "padding_waste", "fixed_padding_waste")
    ]
    out += [_table(pad, ("padding", *names))]
    problems = [p for s in names for p in splits[s]["problems"]]
    if problems:
        out += ["", f"problems skipped in lenient mode ({len(problems)}):"]
        out += [f"  {p}" for p in problems[:20]]
        if len(problems) > 20:
            out.append(f"  ... {len(problems) - 20} more (see --json)")
    return "\n".join(out)
