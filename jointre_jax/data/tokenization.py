"""Loads the encoder's own fast tokenizer (hub id or local directory); the casing class of a
word, which an uncased encoder cannot see."""

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


# Casing classes of a word (index 0: no word, for padding). An uncased encoder lowercases its
# input; these keep what the case said ("HIV" or "hiv", "Visit" or "visit").
CASINGS = ("none", "lower", "upper", "title", "mixed", "number", "alphanumeric", "other")


def casing_class(word: str) -> int:
    """Index into :data:`CASINGS` of ``word``: letters all lower, all upper (two or more
    letters), title (first letter upper, the rest lower; a lone capital too), mixed; digits
    without letters ("number"); letters and digits ("alphanumeric"); neither ("other")."""
    letters = [c for c in word if c.isalpha()]
    digits = any(c.isdigit() for c in word)
    if not letters:
        name = "number" if digits else "other"
    elif digits:
        name = "alphanumeric"
    elif all(c.islower() for c in letters):
        name = "lower"
    elif all(c.isupper() for c in letters):
        name = "upper" if len(letters) > 1 else "title"
    elif letters[0].isupper() and all(c.islower() for c in letters[1:]):
        name = "title"
    else:
        name = "mixed"
    return CASINGS.index(name)
