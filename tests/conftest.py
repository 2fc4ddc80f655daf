"""Shared fixtures: a tiny offline WordPiece tokenizer, BRAT writers, ../shared paths.

Four fake CPU devices are set before JAX is imported anywhere, so sharding tests see a mesh.
"""

import os
import pathlib
import string

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("JOINTRE_SHARED", REPO.parent / "shared"))
CHIA_DIR = pathlib.Path(os.environ.get("JOINTRE_DATA_DIR", SHARED / "data" / "chia"))
MINILM_DIR = pathlib.Path(os.environ.get("JOINTRE_ENCODER", SHARED / "models" / "all-MiniLM-L6-v2"))

needs_chia = pytest.mark.skipif(
    not (CHIA_DIR / "brat").is_dir() or not (MINILM_DIR / "config.json").is_file(),
    reason=f"needs the Chia corpus at {CHIA_DIR} and the MiniLM encoder at {MINILM_DIR} "
    "(../shared beside the repository, or JOINTRE_DATA_DIR / JOINTRE_ENCODER)",
)

# Whole words of the test texts; anything else falls back to single characters.
_WORDS = (
    "patients with type 2 diabetes hba1c > 7 % within the last 3 months no history of "
    "heart failure or stroke age 18 years and older breast lung cancer metformin insulin "
    "severe renal impairment pregnant women aged"
).split()


def write_vocab(path: pathlib.Path) -> pathlib.Path:
    """Writes a small uncased WordPiece vocab that can tokenize any ASCII text."""
    chars = string.ascii_lowercase + string.digits + string.punctuation
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list(chars) + [f"##{c}" for c in chars] + ["é", "≥", "ñ", "##é", "##ñ"]
    tokens += [w for w in dict.fromkeys(_WORDS) if w not in tokens]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A fast uncased BERT tokenizer built offline from a tiny vocab."""
    from transformers import BertTokenizerFast

    vocab = write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


def write_brat(folder: pathlib.Path, name: str, text: str, ann: str, crlf: bool = False):
    """Writes ``folder/name.txt`` (``\\n`` turned into ``\\r\\n`` when crlf) and ``.ann``."""
    folder.mkdir(parents=True, exist_ok=True)
    if crlf:
        text = text.replace("\n", "\r\n")
    (folder / f"{name}.txt").write_bytes(text.encode("utf-8"))
    (folder / f"{name}.ann").write_bytes(ann.encode("utf-8"))
    return folder / f"{name}.txt"


def t_line(ann_id, ent_type, text, start, end=None, mention=None):
    """A BRAT T line for ``text[start:end]`` (end defaults to the end of the mention)."""
    if isinstance(start, str):  # locate the mention by its first occurrence
        mention_text = start
        start = text.index(mention_text)
        end = start + len(mention_text)
    mention = text[start:end] if mention is None else mention
    return f"{ann_id}\t{ent_type} {start} {end}\t{mention}"
