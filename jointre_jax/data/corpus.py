"""Corpus folders and splits: from ``config.data`` to the examples of a split.

A corpus folder is laid out like ``../shared/data/chia``: ``brat/`` holds ``NAME.txt`` and
``NAME.ann`` pairs; ``splits/<split>.txt`` lists document-id prefixes, one a line (a Chia
trial id ``NCT00050349`` selects ``NCT00050349_inc`` and ``NCT00050349_exc``).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

from tqdm.auto import tqdm

from jointre_jax.data.accounting import Accounting
from jointre_jax.data.brat import BratFormatError, Document, read_document, read_text
from jointre_jax.data.encode import Encoder, Example
from jointre_jax.data.schema import Schema
from jointre_jax.data.tokenization import load_tokenizer
from jointre_jax.errors import UserError
from jointre_jax.evaluation import CorpusGold
from jointre_jax.labels import make_scheme


@dataclasses.dataclass
class SplitData:
    """The examples of one split and the accounting of everything read for them."""

    name: str
    examples: list[Example]
    accounting: Accounting
    schema: Schema
    # Every entity and relation of the kept types of the documents the examples come from.
    corpus_gold: CorpusGold | None = None


def read_split_ids(split_file: str | pathlib.Path) -> list[str]:
    """Document-id prefixes of a split file (blank lines and ``#`` comments ignored)."""
    split_file = pathlib.Path(split_file)
    if not split_file.exists():
        raise BratFormatError(split_file, None, "split file is missing")
    ids, seen = [], {}
    for number, line in enumerate(read_text(split_file).splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry in seen:
            raise BratFormatError(
                split_file, number, f"{entry} listed twice (first: line {seen[entry]})"
            )
        seen[entry] = number
        ids.append(entry)
    return ids


def find_documents(brat_dir: str | pathlib.Path, ids=None, split_file=None) -> list[pathlib.Path]:
    """The ``.txt`` files of ``brat_dir``, sorted; only those of ``ids`` when given.

    A document belongs to id X when its stem is X or starts with ``X_``. An id that matches no
    document is an error naming the split file and line.
    """
    brat_dir = pathlib.Path(brat_dir)
    if not brat_dir.is_dir():
        raise BratFormatError(brat_dir, None, "BRAT folder not found")
    paths = sorted(brat_dir.glob("*.txt"))
    if ids is None:
        return paths
    by_prefix: dict[str, list[pathlib.Path]] = {}
    for path in paths:
        by_prefix.setdefault(path.stem, []).append(path)
        if "_" in path.stem:
            by_prefix.setdefault(path.stem.split("_", 1)[0], []).append(path)
    selected = []
    for position, doc_id in enumerate(ids, start=1):
        if doc_id not in by_prefix:
            raise BratFormatError(
                split_file or brat_dir,
                position if split_file else None,
                f"no document {doc_id}*.txt in {brat_dir}",
            )
        selected.extend(by_prefix[doc_id])
    return sorted(dict.fromkeys(selected))


def unpaired_annotations(brat_dir: str | pathlib.Path, ids=None) -> list[pathlib.Path]:
    """``.ann`` files of ``brat_dir`` without a ``.txt`` beside them (of ``ids`` when given):
    their annotations cannot be read, so they are counted ("ann_without_txt")."""
    brat_dir = pathlib.Path(brat_dir)
    orphans = [p for p in sorted(brat_dir.glob("*.ann")) if not p.with_suffix(".txt").exists()]
    if ids is not None:
        wanted = set(ids)
        orphans = [p for p in orphans if p.stem in wanted or p.stem.split("_", 1)[0] in wanted]
    return orphans


def count_unpaired(accounting: Accounting, orphans: list[pathlib.Path]) -> None:
    """Adds unpaired ``.ann`` files to ``accounting`` (skipped, with a message each)."""
    for path in orphans:
        accounting.skipped["ann_without_txt"] += 1
        text = path.with_suffix(".txt").name
        accounting.messages.append(f"{path}: no {text} beside it; not read")


# The fields of config.data that decide how a criterion becomes an example (its schema, its
# labels, its wordpieces), which the members of an ensemble must share.
ENCODING_FIELDS = (
    "entity_types", "relation_types", "group_relations", "group_expansion", "entity_aliases",
    "relation_aliases", "overlap_policy", "anchor", "max_length", "context_length",
)  # fmt: skip


def make_encoder(config) -> Encoder:
    """The Encoder that ``config`` describes (schema, tokenizer, length, label scheme)."""
    lowercase = config.model.lowercase
    tokenizer = load_tokenizer(str(config.model.encoder), lowercase)
    return Encoder(
        Schema.from_config(config.data),
        tokenizer,
        max_length=int(config.data.max_length),
        scheme=make_scheme(config),
        lenient=bool(config.data.lenient),
        context_length=int(config.data.context_length),
    )


def read_or_skip(path, lenient: bool) -> tuple[Document | None, str]:
    """(the BRAT document of ``path``, ""); a document that cannot be read at all raises, or
    in lenient mode gives (None, the error's message) for the caller to count."""
    try:
        return read_document(path, lenient=lenient), ""
    except BratFormatError as err:
        if not lenient:
            raise
        return None, str(err)


def encode_files(
    txt_paths, encoder: Encoder, name: str = "", progress: bool = True, gold=None
) -> tuple[list[Example], Accounting]:
    """Reads and encodes BRAT documents; returns their examples and the merged accounting.

    ``gold``: a :class:`~jointre_jax.evaluation.CorpusGold` that each document read is added to.

    A document that cannot be read at all (missing ``.ann``, ``.ann`` not UTF-8) raises, or in
    lenient mode is counted in ``skipped`` as "unreadable_document" with its message kept.
    """
    examples: list[Example] = []
    total = Accounting()
    for path in tqdm(txt_paths, desc=f"reading {name}".strip(), disable=not progress, leave=False):
        acc = Accounting()
        doc, problem = read_or_skip(path, encoder.lenient)
        if doc is None:
            acc.skipped["unreadable_document"] += 1
            acc.messages.append(problem)
            logging.warning("skipped %s", problem)
        else:
            examples.extend(encoder.encode_document(doc, acc))
            if gold is not None:
                gold.add_document(doc)
        total.merge(acc)
    total.check()
    return examples, total


def _split(config, split: str) -> tuple[pathlib.Path, list[str], pathlib.Path]:
    """(``brat/`` folder, document-id prefixes, split file) of ``split`` in the corpus at
    ``config.data.dir``; a missing corpus folder is a clear error."""
    data_dir = pathlib.Path(str(config.data.dir))
    if not str(config.data.dir) or not data_dir.is_dir():
        raise UserError(
            f"corpus folder {str(config.data.dir)!r} not found: set --config.data.dir or "
            "JOINTRE_DATA_DIR to a folder with brat/ and splits/"
        )
    split_file = data_dir / "splits" / f"{split}.txt"
    return data_dir / "brat", read_split_ids(split_file), split_file


def split_documents(config, split: str) -> list[pathlib.Path]:
    """The ``.txt`` paths of ``split``'s documents in the corpus at ``config.data.dir``
    (``splits/<split>.txt`` over ``brat/``)."""
    return find_documents(*_split(config, split))


def load_split(
    config, split: str, encoder: Encoder | None = None, progress: bool = True
) -> SplitData:
    """Examples of ``split`` (e.g. "train") of the corpus at ``config.data.dir``.

    ``config.data.max_train_examples`` / ``max_eval_examples`` (> 0) keep only the first
    examples of the train split / of the others; the accounting still describes every document
    read, and the corpus gold holds the documents whose examples are all kept.
    """
    encoder = encoder or make_encoder(config)
    gold = CorpusGold(encoder.schema)
    brat_dir, ids, split_file = _split(config, split)
    paths = find_documents(brat_dir, ids, split_file)
    examples, acc = encode_files(paths, encoder, split, progress, gold)
    count_unpaired(acc, unpaired_annotations(brat_dir, ids))
    field = "max_train_examples" if split == config.data.train_split else "max_eval_examples"
    limit = int(config.data[field])
    if 0 < limit < len(examples):
        cut = examples[limit - 1].doc_id
        whole = {ex.doc_id for ex in examples[:limit]} - (
            {cut} if examples[limit].doc_id == cut else set()
        )
        examples, gold = examples[:limit], gold.restricted(whole)
    return SplitData(split, examples, acc, encoder.schema, gold)
