"""Every check of a config, in one place, before any work: :func:`validate`.

A bad value or a combination of options that does not go together is a
:class:`~jointre_jax.errors.UserError` naming the flag and the reason (one line from every
program), raised when the config is built, before anything is read or written: training calls
:func:`validate` before it reads the corpus or touches the workdir, and loading a run calls it
on the saved config. :func:`check_encoder` adds what needs the encoder's own config (its
positions). The modules that use an option trust it; their own checks guard callers that build
objects by hand.
"""

from __future__ import annotations

from jointre_jax.data.schema import GROUP_EXPANSIONS
from jointre_jax.errors import UserError
from jointre_jax.labels import ANCHORS, DECODERS, OVERLAP_POLICIES, SPAN_NESTING
from jointre_jax.model.joint import LABEL_SOURCES, METHODS, RE_OPTIONS, WORD_FEATURES
from jointre_jax.model.losses import MAX_BOUNDARY_SMOOTHING, NEGATIVE_SAMPLING

DTYPES = ("float32", "bfloat16", "float16")
# Options of config.model that only the span decoder has, with the value that turns them off.
SPAN_ONLY = {
    "discontinuous": False,
    "boundary_smoothing": 0.0,
    "span_negative_keep": 1.0,
    "distillation_weight": 0.0,
    "span_context": False,
    "span_conv_layers": 0,
    "span_pooling_dim": 0,
}


def _flag(field: str, value) -> str:
    return f"--config.{field}={value}"


def _choice(config, field: str, choices) -> None:
    section, name = field.split(".") if "." in field else ("", field)
    value = (config[section] if section else config)[name]
    if value not in choices:
        raise UserError(f"{_flag(field, value)}: choose one of {', '.join(map(str, choices))}")


def _range(config, field: str, low, high, closed=(True, True), what="") -> None:
    section, name = field.split(".")
    value = config[section][name]
    above = value >= low if closed[0] else value > low
    below = value <= high if closed[1] else value < high
    if not (above and below):
        interval = f"{'[' if closed[0] else '('}{low}, {high}{']' if closed[1] else ')'}"
        raise UserError(f"{_flag(field, value)}: must be in {interval}{what}")


def _positive(config, field: str, allow_zero: bool = False) -> None:
    section, _, name = field.rpartition(".")
    value = (config[section] if section else config)[name]
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"{_flag(field, value)}: must be {bound}")


def validate(config) -> None:
    """Raises UserError, naming the flag and the reason, for the first invalid value or
    combination of options of ``config``; returns None for a valid config."""
    data, model = config.data, config.model
    _choice(config, "model.method", METHODS)
    _choice(config, "model.ner_decoder", DECODERS)
    _choice(config, "model.re_option", RE_OPTIONS)
    _choice(config, "model.negative_sampling", NEGATIVE_SAMPLING)
    _choice(config, "model.train_label_source", LABEL_SOURCES)
    _choice(config, "model.word_features", WORD_FEATURES)
    _choice(config, "model.span_nesting", SPAN_NESTING)
    _choice(config, "model.compute_dtype", DTYPES)
    _choice(config, "data.overlap_policy", OVERLAP_POLICIES)
    _choice(config, "data.anchor", ANCHORS)
    _choice(config, "data.group_expansion", GROUP_EXPANSIONS)
    for field in (
        "num_epochs",
        "data.batch_size",
        "data.eval_batch_size",
        "data.max_length",
        "model.max_span_width",
        "model.pair_hidden_dim",
        "model.span_hidden_dim",
    ):
        _positive(config, field)  # fmt: skip
    for field in (
        "checkpoint_every_steps",
        "num_devices",
        "data.context_length",
        "data.pack_length",
        "data.pack_rows",
        "data.eval_pack_rows",
        "model.max_entities",
        "model.word_lstm_dim",
        "model.casing_embedding_dim",
        "model.span_pooling_dim",
        "model.span_conv_layers",
        "model.adversarial_epsilon",
        "model.adversarial_consistency",
    ):
        _positive(config, field, allow_zero=True)  # fmt: skip
    if not config.sharding.fsdp >= 1:
        raise UserError(f"{_flag('sharding.fsdp', config.sharding.fsdp)}: must be >= 1")
    _range(config, "model.dropout_rate", 0.0, 1.0, (True, False))
    _range(config, "model.word_masking", 0.0, 1.0, (True, False))
    _range(config, "model.decision_threshold", 0.0, 1.0, (True, False))
    why = " (a span has four neighbours: more could give one more than its whole target)"
    _range(config, "model.boundary_smoothing", 0.0, MAX_BOUNDARY_SMOOTHING, what=why)
    _range(config, "model.span_negative_keep", 0.0, 1.0, (False, True))
    _range(config, "model.distillation_weight", 0.0, 1.0)
    _range(config, "optim.layer_decay", 0.0, 1.0, (False, True))
    _range(config, "optim.ema_decay", 0.0, 1.0, (True, False))
    _range(config, "optim.warmup_fraction", 0.0, 1.0)
    _positive(config, "optim.learning_rate")
    _positive(config, "optim.head_learning_rate", allow_zero=True)

    if model.ner_decoder != "span":
        for name, off in SPAN_ONLY.items():
            if model[name] != off:
                raise UserError(
                    f"{_flag('model.' + name, model[name])}: needs the span decoder "
                    "(--config.model.ner_decoder=span)"
                )
    if model.span_context and not model.span_pooling_dim:
        raise UserError(
            f"{_flag('model.span_context', True)}: feeds the span-content term; it needs "
            "--config.model.span_pooling_dim > 0"
        )
    if model.negative_sampling == "incremental" and model.method != "joint":
        raise UserError(
            f"{_flag('model.negative_sampling', 'incremental')}: needs "
            f"--config.model.method=joint (not {model.method}): its negatives are the joint "
            "model's decoded entities"
        )
    if model.adversarial_consistency and not model.adversarial_epsilon:
        raise UserError(
            f"{_flag('model.adversarial_consistency', model.adversarial_consistency)}: compares "
            "the adversarial pass with the clean one; it needs "
            "--config.model.adversarial_epsilon > 0"
        )
    if model.adversarial_consistency and model.method == "re":
        raise UserError(
            f"{_flag('model.adversarial_consistency', model.adversarial_consistency)}: compares "
            "NER distributions; a standalone RE model (--config.model.method=re) has none"
        )
    if bool(model.distillation_weight) != bool(data.teacher_file):
        raise UserError(
            "knowledge distillation needs both --config.model.distillation_weight > 0 and "
            f"--config.data.teacher_file (got weight {model.distillation_weight}, file "
            f"{data.teacher_file!r}; write a teacher's file with jointre teach)"
        )
    longest = data.max_length + data.context_length
    if data.packing and data.pack_length and data.pack_length < longest:
        raise UserError(
            f"{_flag('data.pack_length', data.pack_length)}: shorter than data.max_length + "
            f"data.context_length = {longest}; every example must fit a packed row"
        )
    if not data.packing and max(data.bucket_boundaries) < longest:
        raise UserError(
            f"{_flag('data.bucket_boundaries', list(data.bucket_boundaries))}: the buckets end "
            f"below data.max_length + data.context_length = {longest}; add a bucket that long"
        )


def check_paths(config) -> None:
    """A training needs a corpus folder and an encoder: an empty ``data.dir`` or
    ``model.encoder`` is one line saying what to set (``configs/demo.py`` leaves both empty
    when ../shared is absent, for ``jointre demo`` to fill in with the shipped sample)."""
    data, encoder = str(config.data.dir), str(config.model.encoder)
    if not data and not encoder:
        raise UserError(
            "no corpus and no encoder (--config.data.dir and --config.model.encoder are empty): "
            "configs/demo.py leaves them empty when ../shared is absent; run "
            "`jointre demo --config=configs/demo.py` (make demo), which trains on the shipped "
            "sample, or set both"
        )
    if not data:
        raise UserError("--config.data.dir is empty: set it (or JOINTRE_DATA_DIR) to a corpus "
                        "folder with brat/ and splits/")  # fmt: skip
    if not encoder:
        raise UserError("--config.model.encoder is empty: set it (or JOINTRE_ENCODER) to a "
                        "hub id or a local encoder folder")  # fmt: skip


def check_encoder(config, bert) -> None:
    """What needs the encoder's config (``bert``: a BertConfig): an example must fit its
    positions. Raises UserError naming the flags."""
    length = int(config.data.max_length) + int(config.data.context_length)
    if length > bert.max_position_embeddings:
        raise UserError(
            f"--config.data.max_length + --config.data.context_length = {length} wordpieces: "
            f"more than the {bert.max_position_embeddings} positions of the encoder "
            f"{config.model.encoder}"
        )
