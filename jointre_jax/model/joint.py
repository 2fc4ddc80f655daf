"""The joint NER + RE model of Chen et al. (2020) and its standalone variants.

``method``:

* ``joint``: BERT -> NER dense (BIO softmax); NER label embedding concatenated with the BERT
  output -> head and tail dense layers -> pair scores;
* ``ner``: the NER half alone (standalone NER);
* ``re``: BERT -> head/tail dense -> pair scores, on gold entities (standalone RE, no label
  embedding);
* ``pipeline``: a standalone NER network and a standalone RE network with separate encoders,
  trained side by side; at inference the NER predictions choose the pairs the RE network scores.

``re_option`` (pair scorer, ``[B, L, L, R]`` logits, R = relation labels incl. "none"):

* ``m1``: linear(h_i + t_j) + b, computed as ``W h_i + W t_j + b`` (no [B, L, L, H] tensor);
* ``m2``: biaffine ``h_i^T U t_j + W (h_i || t_j) + b`` ("bilinear + linear");
* ``m2_bilinear``: ``h_i^T U t_j`` alone ("bilinear only").

The bilinear term is one einsum over all token pairs: ``bid,rde,bje->bijr``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jointre_jax.model.bert import BertConfig, BertModel

METHODS = ("joint", "ner", "re", "pipeline")
RE_OPTIONS = ("m1", "m2", "m2_bilinear")
LABEL_SOURCES = ("gold", "predicted")


class PairScorer(nn.Module):
    """Head/tail projections and the pair scores of ``re_option``.

    Input features [B, L, D]; output logits [B, L, L, num_relations] where [b, i, j] scores
    the relation from the entity anchored at i (head) to the one anchored at j (tail).
    """

    num_relations: int
    hidden_dim: int
    re_option: str
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features, deterministic: bool = True, dropout_rate: float = 0.1):
        if self.re_option not in RE_OPTIONS:
            raise ValueError(f"re_option {self.re_option!r} not in {RE_OPTIONS}")
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name)  # noqa: E731
        head = nn.relu(dense(self.hidden_dim, "head")(features))
        tail = nn.relu(dense(self.hidden_dim, "tail")(features))
        head = nn.Dropout(dropout_rate)(head, deterministic=deterministic)
        tail = nn.Dropout(dropout_rate)(tail, deterministic=deterministic)
        if self.re_option == "m1":  # W (h_i + t_j) + b = W h_i + W t_j + b
            kernel = self.param(
                "classifier_kernel",
                nn.initializers.lecun_normal(),
                (self.hidden_dim, self.num_relations),
            )
            bias = self.param("classifier_bias", nn.initializers.zeros, (self.num_relations,))
            kernel = kernel.astype(self.dtype)
            from_head = jnp.einsum("bid,dr->bir", head, kernel) + bias.astype(self.dtype)
            from_tail = jnp.einsum("bjd,dr->bjr", tail, kernel)
            return from_head[:, :, None, :] + from_tail[:, None, :, :]
        # Fan-in d * d (each score sums d * d products): scores start with a spread of order 1,
        # as m1's do. A fan-in of d left them sqrt(d)/2 wide (8 at d = 256), and the large early
        # RE gradients cost the shared encoder about 10 NER F1 points on a short Chia run.
        init = nn.initializers.lecun_normal(in_axis=(1, 2), out_axis=0)
        bilinear = self.param(
            "bilinear", init, (self.num_relations, self.hidden_dim, self.hidden_dim), jnp.float32
        )
        scores = jnp.einsum("bid,rde,bje->bijr", head, bilinear.astype(self.dtype), tail)
        if self.re_option == "m2":  # + W (h_i || t_j) + b = W_h h_i + W_t t_j + b
            scores = scores + dense(self.num_relations, "linear_head")(head)[:, :, None, :]
            tail_part = nn.Dense(
                self.num_relations, use_bias=False, dtype=self.dtype, name="linear_tail"
            )
            scores = scores + tail_part(tail)[:, None, :, :]
        return scores


class JointModel(nn.Module):
    """NER and/or RE over a BERT encoder; see the module docstring for the variants.

    ``__call__(batch, deterministic, label_source)`` takes the batch arrays of
    ``data.batching`` (``input_ids`` and ``input_mask`` [B, L], ``ner_labels`` [B, L] when the
    label embedding reads gold labels) and returns a dict with ``ner_logits`` [B, L, T] (not for
    ``re``) and ``re_logits`` [B, L, L, R] (not for ``ner``).
    """

    encoder_config: BertConfig
    num_bio_tags: int
    num_relations: int
    method: str = "joint"
    re_option: str = "m2_bilinear"
    label_embedding_dim: int = 16
    pair_hidden_dim: int = 256
    dropout_rate: float = 0.1
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} not in {METHODS}")
        bert = lambda name: BertModel(self.encoder_config, self.dtype, name=name)  # noqa: E731
        pairs = lambda name: PairScorer(  # noqa: E731
            self.num_relations, self.pair_hidden_dim, self.re_option, self.dtype, name=name
        )
        self.encoder = bert("encoder")
        if self.method in ("joint", "ner", "pipeline"):
            self.ner_dense = nn.Dense(self.num_bio_tags, dtype=self.dtype, name="ner")
        if self.method == "joint":
            self.label_embedding = nn.Embed(self.num_bio_tags, self.label_embedding_dim)
        if self.method in ("joint", "re"):
            self.pairs = pairs("pairs")
        if self.method == "pipeline":
            self.re_encoder = bert("re_encoder")
            self.re_pairs = pairs("re_pairs")
        self.dropout = nn.Dropout(self.dropout_rate)

    def __call__(self, batch, deterministic: bool = True, label_source: str = "predicted"):
        if label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source {label_source!r} not in {LABEL_SOURCES}")
        ids, mask = batch["input_ids"], batch["input_mask"]
        hidden = self.encoder(ids, mask, deterministic=deterministic)
        hidden = self.dropout(hidden, deterministic=deterministic)
        out = {}
        if self.method != "re":
            out["ner_logits"] = self.ner_dense(hidden)
        if self.method == "joint":
            if label_source == "gold":
                labels = batch["ner_labels"]
            else:
                labels = jnp.argmax(jax.lax.stop_gradient(out["ner_logits"]), axis=-1)
            embedded = self.label_embedding(labels).astype(hidden.dtype)
            features = jnp.concatenate([hidden, embedded], axis=-1)
            out["re_logits"] = self.pairs(features, deterministic, self.dropout_rate)
        elif self.method == "re":
            out["re_logits"] = self.pairs(hidden, deterministic, self.dropout_rate)
        elif self.method == "pipeline":
            re_hidden = self.re_encoder(ids, mask, deterministic=deterministic)
            re_hidden = self.dropout(re_hidden, deterministic=deterministic)
            out["re_logits"] = self.re_pairs(re_hidden, deterministic, self.dropout_rate)
        return out

    def encoder_prefixes(self) -> tuple[tuple[str, ...], ...]:
        """Where pre-trained BERT weights go in this model's params."""
        return (("encoder",), ("re_encoder",)) if self.method == "pipeline" else (("encoder",),)
