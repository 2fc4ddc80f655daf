"""Shared fixtures: a tiny offline WordPiece tokenizer, BRAT writers, ../shared paths.

Four fake CPU devices are set before JAX is imported anywhere, so sharding tests see a mesh.
"""

import os
import pathlib

# XLA's backend optimisation is off: the suite is dominated by compiling many small models
# (about half the compile time goes; the arithmetic is the same IEEE ops, without fast-math
# either way). Subprocesses inherit both flags; default_optimisation_env drops this one.
UNOPTIMISED = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {UNOPTIMISED}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile the same tiny models again and again: a persistent cache makes repeats cheap.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# The project's own cache setting (configs/default.py): the same folder, never the user's.
os.environ.setdefault("JOINTRE_COMPILATION_CACHE", os.environ["JAX_COMPILATION_CACHE_DIR"])

import pytest  # noqa: E402

from configs import default  # noqa: E402
from jointre_jax.data.sample import wordpiece_vocab, write_encoder_dir  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("JOINTRE_SHARED", REPO.parent / "shared"))
CHIA_DIR = pathlib.Path(os.environ.get("JOINTRE_DATA_DIR", SHARED / "data" / "chia"))
MINILM_DIR = pathlib.Path(os.environ.get("JOINTRE_ENCODER", SHARED / "models" / "all-MiniLM-L6-v2"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (bound, then closed again)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def default_optimisation_env(**extra: str) -> dict[str, str]:
    """``os.environ`` plus ``extra`` for a subprocess that mostly runs steps rather than
    compiling: the suite's XLA flags less the one that turns optimisation off."""
    flags = os.environ.get("XLA_FLAGS", "").replace(UNOPTIMISED, "").strip()
    return {**os.environ, **extra, "XLA_FLAGS": flags}


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


# A 2-layer, 32-wide BERT: random weights, for fast training tests (config.model.pretrained=False).
TINY_BERT = {
    "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 64, "max_position_embeddings": 128, "type_vocab_size": 2,
}  # fmt: skip


# Encodable beyond ASCII: the Unicode tests use these.
TEST_VOCAB = wordpiece_vocab(["é", "≥", "ñ", "##é", "##ñ", *_WORDS])


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A fast uncased BERT tokenizer built offline from a tiny vocab."""
    from transformers import BertTokenizerFast

    encoder = write_encoder_dir(tmp_path_factory.mktemp("encoder"), TEST_VOCAB, TINY_BERT)
    return BertTokenizerFast(vocab_file=str(encoder / "vocab.txt"), do_lower_case=True)


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


def tiny_corpus(root):
    """A corpus folder with train/dev/test splits and a local tokenizer directory."""
    texts = {
        "NCT1_inc": "Patients with type 2 diabetes\nHbA1c > 7 %\n",
        "NCT1_exc": "no history of heart failure or stroke\n",
        "NCT2_inc": "women aged 18 years and older\n",
        "NCT3_exc": "pregnant women\nbreast or lung cancer\n",
    }
    anns = {
        "NCT1_inc": [
            t_line("T1", "Condition", texts["NCT1_inc"], "type 2 diabetes"),
            t_line("T2", "Measurement", texts["NCT1_inc"], "HbA1c"),
            t_line("T3", "Value", texts["NCT1_inc"], "> 7 %"),
            "R1\tHas_value Arg1:T2 Arg2:T3",
        ],
        "NCT1_exc": [
            t_line("T1", "Condition", texts["NCT1_exc"], "heart failure"),
            t_line("T2", "Condition", texts["NCT1_exc"], "stroke"),
            t_line("T3", "Negation", texts["NCT1_exc"], "no"),
            t_line("T4", "Parsing_Error", texts["NCT1_exc"], "history"),
            "*\tOR T1 T2",
            "R1\tHas_negation Arg1:T1 Arg2:T3",
            "R2\tmulti Arg1:T1 Arg2:T2",
        ],
        "NCT2_inc": [
            t_line("T1", "Person", texts["NCT2_inc"], "women"),
            t_line("T2", "Value", texts["NCT2_inc"], "18 years and older"),
            "R1\tHas_value Arg1:T1 Arg2:T2",
        ],
        "NCT3_exc": [
            t_line("T1", "Condition", texts["NCT3_exc"], "pregnant"),
            "T2\tCondition 15 21;30 36\tbreast cancer",
            t_line("T3", "Condition", texts["NCT3_exc"], "lung cancer"),
            "T4\tCondition 0 8\tpregnent",  # text mismatch
        ],
    }
    for name, text in texts.items():
        write_brat(root / "corpus" / "brat", name, text, "\n".join(anns[name]) + "\n")
    splits = root / "corpus" / "splits"
    splits.mkdir()
    (splits / "train.txt").write_text("NCT1\nNCT3\n")
    (splits / "dev.txt").write_text("NCT2\n")
    (splits / "test.txt").write_text("NCT2_inc\n")
    encoder = write_encoder_dir(root / "encoder", TEST_VOCAB, TINY_BERT)
    config = default.get_config()
    config.data.dir = str(root / "corpus")
    config.model.encoder = str(encoder)
    config.data.batch_size = config.data.eval_batch_size = 2
    return config


def override_flags(config) -> list[str]:
    """--config.x=y flags that turn configs/default.py into ``config`` (a tiny_train_config)."""
    flat = {
        "data.dir": config.data.dir,
        "model.encoder": config.model.encoder,
        "model.pretrained": config.model.pretrained,
        "model.pair_hidden_dim": config.model.pair_hidden_dim,
        "data.batch_size": config.data.batch_size,
        "data.eval_batch_size": config.data.eval_batch_size,
        "data.eval_split": config.data.eval_split,
        "data.test_split": config.data.test_split,
        "optim.learning_rate": config.optim.learning_rate,
        "num_epochs": config.num_epochs,
        "checkpoint_every_steps": config.checkpoint_every_steps,
        "sharding.fsdp": config.sharding.fsdp,
        "sharding.fsdp_min_size": config.sharding.fsdp_min_size,
    }
    return [f"--config.{k}={v}" for k, v in flat.items()] + [
        "--config.data.bucket_boundaries=(32,)"
    ]


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on 127.0.0.1 (tests/postgres_server.py); skips saying why
    where none can start."""
    from tests import postgres_server as server_lib

    try:
        server = server_lib.start()
    except server_lib.Unavailable as why:
        pytest.skip(f"no PostgreSQL server: {why}")
    yield server
    server.stop()
