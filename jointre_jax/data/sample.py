"""The demo sample shipped with the package, written out as a BRAT corpus and a tiny encoder.

``assets/demo_criteria.txt`` holds criteria annotated inline (``[T1:Condition heart failure]``)
by the project. :func:`write_sample_corpus` turns it into a corpus folder (``brat/`` with CRLF
text files, ``splits/``) that the normal pipeline reads, and :func:`write_tiny_encoder` into an
encoder directory (WordPiece vocab of the sample's words, tokenizer config, and the config.json
of a small BERT that ``config.model.pretrained=False`` initialises randomly).
"""

from __future__ import annotations

import json
import pathlib
import re
import string
from importlib import resources

from jointre_jax.data.brat import write_document

_ENTITY = re.compile(r"\[(T\d+):(\w+) ([^\]]+)\]")
SPLITS = {"train": ("NCT90000001", "NCT90000002", "NCT90000003", "NCT90000004"),
          "dev": ("NCT90000005",), "test": ("NCT90000006",)}  # fmt: skip
TINY_ENCODER = {
    "model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 128, "max_position_embeddings": 128, "type_vocab_size": 2,
}  # fmt: skip


def read_markup(text: str) -> dict[str, list[tuple[str, list, list]]]:
    """{document: [(criterion text, entities [(id, type, start, end, mention)], relations)]}."""
    documents: dict[str, list] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            doc_id, marked, relations = line.split("|")
        except ValueError:
            raise ValueError(
                f"demo_criteria.txt:{number}: want 'doc|criterion|relations'"
            ) from None
        plain, entities, cursor = [], [], 0
        length = 0
        for match in _ENTITY.finditer(marked):
            before = marked[cursor : match.start()]
            plain.append(before)
            length += len(before)
            ann_id, ent_type, mention = match.groups()
            entities.append((ann_id, ent_type, length, length + len(mention), mention))
            plain.append(mention)
            length += len(mention)
            cursor = match.end()
        plain.append(marked[cursor:])
        rels = [tuple(r.split()) for r in relations.split(";") if r.strip()]
        documents.setdefault(doc_id, []).append(("".join(plain), entities, rels))
    return documents


def write_sample_corpus(out_dir: str | pathlib.Path) -> pathlib.Path:
    """Writes the shipped sample as a corpus folder (CRLF, like Chia); returns it."""
    out_dir = pathlib.Path(out_dir)
    markup = resources.files("jointre_jax.assets").joinpath("demo_criteria.txt").read_text("utf-8")
    for doc_id, criteria in read_markup(markup).items():
        text, entities, relations, offset = "", [], [], 0
        for number, (criterion, ents, rels) in enumerate(criteria):
            for ann_id, ent_type, start, end, mention in ents:
                entities.append((ann_id, ent_type, [(offset + start, offset + end)], mention))
            for i, (rel_type, head, tail) in enumerate(rels):
                relations.append((f"R{number}_{i}", rel_type, head, tail))
            text += criterion + "\r\n"
            offset = len(text)
        # OR relations are written as BRAT '*' groups, as Chia does.
        groups = [("OR", (head, tail)) for _, kind, head, tail in relations if kind == "OR"]
        binary = [r for r in relations if r[1] != "OR"]
        write_document(doc_id, text, entities, binary, out_dir / "brat", groups)
    (out_dir / "splits").mkdir(parents=True, exist_ok=True)
    for split, trials in SPLITS.items():
        (out_dir / "splits" / f"{split}.txt").write_text("\n".join(trials) + "\n")
    return out_dir


def wordpiece_vocab(words) -> list[str]:
    """A WordPiece vocab that tokenizes any ASCII text: special tokens, ASCII characters and
    their ``##`` continuations, then ``words`` in the order given (each once)."""
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    known = set(vocab)
    return vocab + [w for w in dict.fromkeys(words) if w not in known]


def write_encoder_dir(out_dir: str | pathlib.Path, vocab: list[str], model_config: dict):
    """Writes an uncased BERT encoder directory: vocab.txt, tokenizer_config.json and the
    config.json of ``model_config`` (``vocab_size`` filled in). Returns the directory."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = {"tokenizer_class": "BertTokenizer", "do_lower_case": True}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    (out_dir / "config.json").write_text(json.dumps(model_config | {"vocab_size": len(vocab)}))
    return out_dir


def write_tiny_encoder(out_dir: str | pathlib.Path, corpus_dir: str | pathlib.Path) -> pathlib.Path:
    """Writes the demo encoder: the corpus' lower-cased words in the vocab, TINY_ENCODER."""
    words = set()
    for path in sorted(pathlib.Path(corpus_dir, "brat").glob("*.txt")):
        words |= set(re.findall(r"[a-z0-9]+", path.read_text(encoding="utf-8").lower()))
    return write_encoder_dir(out_dir, wordpiece_vocab(sorted(words)), TINY_ENCODER)
