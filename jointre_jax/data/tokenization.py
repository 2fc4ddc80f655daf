"""Loads the encoder's own fast tokenizer (hub id or local directory)."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=8)
def load_tokenizer(encoder: str, lowercase: bool | None = None):
    """Fast (offset-mapping) tokenizer of ``encoder``.

    Args:
      encoder: a hub id (``bert-base-uncased``, ``dmis-lab/biobert-base-cased-v1.2``) or a local
        directory with ``tokenizer.json`` or ``vocab.txt``.
      lowercase: force lower-casing on (uncased BERT) or off (cased BioBERT, whose hub files do
        not say so); None keeps what the tokenizer files say.
    Returns:
      A ``transformers`` PreTrainedTokenizerFast.
    """
    from transformers import AutoTokenizer

    from jointre_jax.model.pretrained import check_encoder

    check_encoder(encoder)  # a missing folder says so, not "malformed repo id"
    kwargs = {} if lowercase is None else {"do_lower_case": bool(lowercase)}
    tokenizer = AutoTokenizer.from_pretrained(encoder, use_fast=True, **kwargs)
    if not tokenizer.is_fast:
        raise ValueError(f"{encoder}: no fast tokenizer; offsets need one (tokenizer.json)")
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError(f"{encoder}: tokenizer has no [CLS]/[SEP] tokens (not a BERT vocab?)")
    return tokenizer
