"""The joint NER + RE model of Chen et al. (2020), its standalone variants and a span decoder.

Every head works on **words**: the encoder's output at each word's first wordpiece
(``batch["word_index"]``), so no entity can begin or end inside a word.

``method``:

* ``joint``: BERT -> NER head; entity features (below) -> head and tail dense layers -> pair
  scores;
* ``ner``: the NER half alone (standalone NER);
* ``re``: BERT -> entity features without label embedding -> pair scores, on gold entities
  (standalone RE);
* ``pipeline``: a standalone NER network and a standalone RE network with separate encoders,
  trained side by side; at inference the NER predictions choose the entities the RE network
  scores.

The NER head and the entity features follow the label scheme (:mod:`jointre_jax.labels`):

* ``bio``: a dense layer + softmax over BIO tags per word [B, L, T]; an NER label embedding
  (16) of each word's tag is concatenated with the encoder output, and an entity's features are
  those of its anchor word (first or last), as in the paper;
* ``span``: a biaffine start-end scorer over all word pairs, one einsum to
  ``[B, L, L, types + 1]``; an entity's features are its first word's and last word's encoder
  outputs and its type embedding.

Relations are scored between the entities of a table of N slots (:mod:`jointre_jax.labels`),
``re_option`` being the pair scorer (``[B, N, N, R]`` logits, R = relation labels incl. "none"):

* ``m1``: linear(h_i + t_j) + b, computed as ``W h_i + W t_j + b`` (no [B, N, N, H] tensor);
* ``m2``: biaffine ``h_i^T U t_j + W (h_i || t_j) + b`` ("bilinear + linear");
* ``m2_bilinear``: ``h_i^T U t_j`` alone ("bilinear only").

The bilinear term is one einsum over all entity pairs: ``bid,rde,bje->bijr``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jointre_jax.data.tokenization import CASINGS
from jointre_jax.labels import (
    EntityScheme,
    gold_as_decoded,
    gold_table,
    segment_starts,
)
from jointre_jax.model.bert import BertConfig, BertModel
from jointre_jax.model.spans import SpanScorer

METHODS = ("joint", "ner", "re", "pipeline")
RE_OPTIONS = ("m1", "m2", "m2_bilinear")
LABEL_SOURCES = ("gold", "predicted")
WORD_FEATURES = ("first", "first_last")


class PairScorer(nn.Module):
    """Head/tail projections and the pair scores of ``re_option``.

    Input features [B, N, D] of N entities; output logits [B, N, N, num_relations] where
    [b, i, j] scores the relation from entity i (head) to entity j (tail).
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


def gate_blocks(init, gates: int = 4):
    """An initializer of a [H, gates * H] kernel: ``init`` on each [H, H] block (flax's LSTM
    cells initialise each gate's recurrent kernel orthogonally on its own)."""

    def blocks(key, shape, dtype=jnp.float32):
        keys = jax.random.split(key, gates)
        width = shape[1] // gates
        return jnp.concatenate([init(k, (shape[0], width), dtype) for k in keys], axis=1)

    return blocks


class WordLSTM(nn.Module):
    """A bidirectional LSTM over the words of each segment: [B, L, D] -> [B, L, 2 features].

    ``segment`` int [B, L] (``batch["word_segment"]``: each word's criterion in its row, 0 for
    no word): both directions restart where it changes, so a word of a packed row reads the
    words of its own criterion only, and gets what it gets in a row of its own.

    The cell is flax's ``OptimizedLSTMCell`` (gates i, f, g, o; tested equal), its four gates
    fused: per direction ``{direction}_input`` [D, 4H], ``{direction}_hidden`` [H, 4H] and
    ``{direction}_bias`` [4H]. The input projections of every word are one matmul before the
    recurrence, and one scan steps both directions at once (the row reversed for the second),
    so the loop does one batched [2, B, H] x [2, H, 4H] product a word.
    """

    features: int

    @nn.compact
    def __call__(self, words, segment):
        size, width = self.features, words.shape[-1]
        directions = ("forward", "backward")
        w_in = jnp.stack([
            self.param(f"{d}_input", nn.initializers.lecun_normal(), (width, 4 * size))
            for d in directions
        ])  # fmt: skip
        w_hidden = jnp.stack([
            self.param(f"{d}_hidden", gate_blocks(nn.initializers.orthogonal()), (size, 4 * size))
            for d in directions
        ])  # fmt: skip
        bias = jnp.stack(
            [self.param(f"{d}_bias", nn.initializers.zeros, (4 * size,)) for d in directions]
        )
        # Time-major [L, 2, B, ...]: direction 1 reads the row from its end.
        rows = jnp.stack([words, words[:, ::-1]])  # [2, B, L, D]
        inputs = jnp.einsum("kbld,kdg->lkbg", rows, w_in) + bias[None, :, None, :]
        segments = jnp.stack([segment, segment[:, ::-1]])  # [2, B, L]
        restart = jax.vmap(segment_starts)(segments).transpose(2, 0, 1)  # [L, 2, B]

        def step(carry, xs):
            x, fresh = xs
            c, h = (jnp.where(fresh[..., None], 0.0, v) for v in carry)
            i, f, g, o = jnp.split(x + jnp.einsum("kbh,khg->kbg", h, w_hidden), 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (c, h), h

        zeros = jnp.zeros((2, words.shape[0], size), inputs.dtype)
        _, out = jax.lax.scan(step, (zeros, zeros), (inputs, restart))  # [L, 2, B, H]
        forward, backward = out[:, 0].transpose(1, 0, 2), out[::-1, 1].transpose(1, 0, 2)
        return jnp.concatenate([forward, backward], axis=-1)


def gather(values, index):
    """values [B, L, ...] at index int [B, N] -> [B, N, ...]."""
    index = jnp.clip(index, 0, values.shape[1] - 1)
    index = index.reshape(index.shape + (1,) * (values.ndim - 2))
    return jnp.take_along_axis(values, index, axis=1)


def criterion_context(hidden, batch):
    """The [CLS] output of each word's criterion: hidden [B, T, D] -> [B, L, D].

    Unpacked rows hold one criterion, its [CLS] at wordpiece 0. In packed rows each segment
    begins with its own [CLS] (``position_ids`` 0), and a word reads that of its
    ``word_segment``.
    """
    segments = batch.get("segment_ids")
    if segments is None:
        shape = batch["word_index"].shape + hidden.shape[-1:]
        return jnp.broadcast_to(hidden[:, :1], shape)
    starts = (batch["position_ids"] == 0) & (segments > 0)  # [B, T] each segment's [CLS]
    owner = (segments[:, None, :] == batch["word_segment"][:, :, None]) & starts[:, None, :]
    return gather(hidden, jnp.argmax(owner, axis=-1))  # words of no segment read wordpiece 0


def word_segments(batch):
    """Each word's criterion in its row, int [B, L]: ``word_segment`` of a packed row, else 1
    for every real word of the row's one criterion; 0 = padding."""
    return batch.get("word_segment", batch["word_mask"].astype(jnp.int32))


def mask_words(ids, batch, chosen, mask_token_id: int):
    """ids int [B, T] with every wordpiece of the ``chosen`` words (bool [B, L]) replaced by
    ``mask_token_id``; a word spans ``word_index`` to ``word_end_index`` (inclusive)."""
    rows = jnp.arange(ids.shape[0])[:, None]
    chosen = chosen.astype(jnp.int32)
    edges = jnp.zeros(ids.shape, jnp.int32).at[rows, batch["word_index"]].add(chosen)
    edges = edges.at[rows, batch["word_end_index"] + 1].add(-chosen, mode="drop")  # T: none
    return jnp.where(jnp.cumsum(edges, axis=1) > 0, mask_token_id, ids)


def incremental_table(gold: dict, predicted: dict) -> dict:
    """Gold entities and the decoded ones that are not gold: [B, 2N] (incremental negatives).

    A decoded entity equal to a gold one (span and type) is not repeated: it marks that gold
    entity ``predicted``. ``predicted`` [B, 2N] is True for gold entities found by the decoder
    and for every decoded entity that is not gold.
    """
    same = (
        (predicted["start"][:, :, None] == gold["start"][:, None, :])
        & (predicted["end"][:, :, None] == gold["end"][:, None, :])
        & (predicted["type"][:, :, None] == gold["type"][:, None, :])
        & predicted["mask"][:, :, None]
        & gold["mask"][:, None, :]
    )  # [B, N decoded, N gold]
    extra = predicted["mask"] & ~same.any(axis=2)
    joined = {k: jnp.concatenate([gold[k], predicted[k]], axis=1) for k in ("start", "end", "type")}
    joined["mask"] = jnp.concatenate([gold["mask"], extra], axis=1)
    joined["predicted"] = jnp.concatenate([same.any(axis=1), extra], axis=1)
    return joined


def per_run(default):
    """A :class:`ModelOptions` field that the members of an ensemble need not share (training
    only, or the size of a static table that inference takes from the first member)."""
    return dataclasses.field(default=default, metadata={"shared": False})


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Every option of ``config.model`` that builds the network, named as in the config
    (``configs/default.py`` says what each does). :meth:`from_config` is the one place they
    are read; a new option is a field here and a line in the config, nothing else. The
    defaults are the config's, for models built by hand (tests).

    The members of an ensemble must share every field but those made with :func:`per_run`
    (:meth:`shared`; ``jointre_jax.inference.check_member``).
    """

    method: str = "joint"
    re_option: str = "m2_bilinear"
    ner_label_embedding_dim: int = 16
    pair_hidden_dim: int = 256
    span_hidden_dim: int = 256
    span_pooling_dim: int = 0
    span_context: bool = False
    span_conv_layers: int = 0
    span_conv_dim: int = 64
    word_features: str = "first"
    layer_mix: bool = False
    word_lstm_dim: int = 0
    casing_embedding_dim: int = 0
    max_entities: int = per_run(32)
    dropout_rate: float = per_run(0.1)
    word_masking: float = per_run(0.0)
    compute_dtype: str = per_run("float32")

    @classmethod
    def from_config(cls, model) -> ModelOptions:
        """The options of ``config.model`` (every field read, each as its field's type)."""
        return cls(**{f.name: type(f.default)(model[f.name]) for f in dataclasses.fields(cls)})

    @classmethod
    def shared(cls) -> tuple[str, ...]:
        """The fields the members of an ensemble must share."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("shared", True))


class JointModel(nn.Module):
    """NER and/or RE over a BERT encoder; see the module docstring for the variants.

    ``__call__(batch, deterministic, label_source, tables)`` takes the batch arrays of
    ``data.batching`` and returns a dict with ``ner_logits`` (not for ``re``; [B, L, T] for BIO,
    [B, L, L, types + 1] for span), ``predicted`` (the decoded entity table, when a table needs
    it) and, for each name in ``tables`` ("gold", "predicted", "incremental"), that entity
    table as ``table_<name>`` and its relation logits as ``re_logits_<name>`` [B, N', N', R]
    (not for ``ner``). It composes two stages that prediction also calls one by one, so that
    an ensemble decodes between them (:func:`jointre_jax.steps.predict_step`): ``encode``
    (NER logits and the pair scorer's word features) and ``relation_logits`` (of any table).

    Packed rows (:mod:`jointre_jax.data.packing`): the encoder keeps to each segment
    (``segment_ids``, ``position_ids``), and decoding and the word LSTM to each word segment
    (``word_segment``).

    Word features (every head reads them): the encoder output (with ``layer_mix``, a learned
    softmax mixture of the embeddings and all layers, times a learned scale) at each word's
    first wordpiece, concatenated with that at its last wordpiece for ``word_features =
    "first_last"``, then with ``word_lstm_dim`` > 0 a bidirectional LSTM over the words (Yu et
    al. 2020 put one between BERT and the biaffine scorer). ``span_pooling_dim`` > 0 adds the
    span-content term of :class:`SpanScorer`, ``span_conv_layers`` > 0 its span-interaction
    term (``span_conv_dim`` wide). ``casing_embedding_dim`` > 0 appends to each
    word an embedding of its casing class (``batch["word_casing"]``, what an uncased encoder
    cannot see), before the LSTM. ``span_context`` gives that term the
    criterion's [CLS] output (:func:`criterion_context`).

    ``word_masking`` > 0 (training only): each word is replaced, all its wordpieces, by the
    tokenizer's ``mask_token_id`` with that probability before the encoder reads the row
    (:func:`mask_words`), so that no entity is learned from its surface form alone.
    """

    encoder_config: BertConfig
    scheme: EntityScheme
    num_relations: int
    options: ModelOptions = ModelOptions()
    mask_token_id: int = -1

    @classmethod
    def build(cls, encoder_config, scheme, num_relations, mask_token_id=-1, **options):
        """A model of ``ModelOptions(**options)`` (tests build small ones by hand)."""
        return cls(encoder_config, scheme, num_relations, ModelOptions(**options), mask_token_id)

    @property
    def method(self) -> str:
        return self.options.method

    @property
    def max_entities(self) -> int:
        return self.options.max_entities

    @property
    def dtype(self):
        return jnp.dtype(self.options.compute_dtype)

    def setup(self):
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} not in {METHODS}")
        bert = lambda name: BertModel(self.encoder_config, self.dtype, name=name)  # noqa: E731
        pairs = lambda name: PairScorer(  # noqa: E731
            self.num_relations,
            self.options.pair_hidden_dim,
            self.options.re_option,
            self.dtype,
            name=name,
        )
        if self.options.word_features not in WORD_FEATURES:
            raise ValueError(f"word_features {self.options.word_features!r} not in {WORD_FEATURES}")
        self.encoder = bert("encoder")
        if (
            self.options.layer_mix
        ):  # softmax weights over the embeddings and every layer, and a scale
            layers = self.encoder_config.num_hidden_layers + 1
            self.layer_weights = self.param("layer_weights", nn.initializers.zeros, (layers,))
            self.layer_scale = self.param("layer_scale", nn.initializers.ones, ())
        if self.options.casing_embedding_dim:
            self.casing_embedding = nn.Embed(len(CASINGS), self.options.casing_embedding_dim)
        if self.options.word_lstm_dim:
            self.word_lstm = WordLSTM(self.options.word_lstm_dim)
        classes = self.scheme.num_classes
        if self.method in ("joint", "ner", "pipeline"):
            if self.scheme.scores_spans:
                self.ner_spans = SpanScorer(
                    classes,
                    self.options.span_hidden_dim,
                    self.scheme.max_width,
                    pool_dim=self.options.span_pooling_dim,
                    conv_layers=self.options.span_conv_layers,
                    conv_dim=self.options.span_conv_dim,
                    dtype=self.dtype,
                    name="ner",
                )
            else:
                self.ner_dense = nn.Dense(classes, dtype=self.dtype, name="ner")
        if self.method == "joint":
            self.label_embedding = nn.Embed(classes, self.options.ner_label_embedding_dim)
        if self.method in ("joint", "re"):
            self.pairs = pairs("pairs")
        if self.method == "pipeline":
            self.re_encoder = bert("re_encoder")
            self.re_pairs = pairs("re_pairs")
        self.dropout = nn.Dropout(self.options.dropout_rate)

    def words(self, encoder, batch, deterministic: bool):
        """(word features [B, L, D'], criterion context [B, L, D] or None) from the encoder
        output (see ``word_features``, ``layer_mix``, ``casing_embedding_dim``,
        ``word_lstm_dim``, ``span_context`` and ``word_masking`` in the class docstring)."""
        ids, mask = batch["input_ids"], batch["input_mask"]
        if self.options.word_masking and not deterministic:
            if self.mask_token_id < 0:
                raise ValueError("word_masking needs the tokenizer's mask_token_id")
            chosen = jax.random.bernoulli(
                self.make_rng("dropout"), self.options.word_masking, batch["word_mask"].shape
            )
            ids = mask_words(ids, batch, chosen & batch["word_mask"], self.mask_token_id)
        packing = {k: batch.get(k) for k in ("segment_ids", "position_ids")}  # packed rows
        if self.options.layer_mix:
            layers = encoder(ids, mask, deterministic=deterministic, all_layers=True, **packing)
            weights = jax.nn.softmax(self.layer_weights).astype(layers.dtype)
            hidden = self.layer_scale.astype(layers.dtype) * jnp.einsum(
                "l,lbtd->btd", weights, layers
            )
        else:
            hidden = encoder(ids, mask, deterministic=deterministic, **packing)
        hidden = self.dropout(hidden, deterministic=deterministic)
        context = criterion_context(hidden, batch) if self.options.span_context else None
        words = gather(hidden, batch["word_index"])
        if self.options.word_features == "first_last":
            words = jnp.concatenate([words, gather(hidden, batch["word_end_index"])], axis=-1)
        if self.options.casing_embedding_dim:
            casing = self.casing_embedding(batch["word_casing"]).astype(words.dtype)
            words = jnp.concatenate([words, casing], axis=-1)
        if self.options.word_lstm_dim:
            words = self.word_lstm(words.astype(jnp.float32), word_segments(batch))
            words = self.dropout(words.astype(self.dtype), deterministic=deterministic)
        return words, context

    def ner(self, words, deterministic: bool, context=None, segment=None):
        if self.scheme.scores_spans:
            return self.ner_spans(words, deterministic, self.options.dropout_rate, context, segment)
        return self.ner_dense(words)

    def entity_features(self, words, table, labels=None):
        """Features [B, N, F] of a table's entities from word features [B, L, D].

        ``labels``: BIO tags [B, L] whose embedding joins each word's features (joint BIO), or
        for the span scheme any non-None value to add the entity type embedding (joint span).
        """
        if not self.scheme.scores_spans:
            if labels is not None:
                embedded = self.label_embedding(labels).astype(words.dtype)
                words = jnp.concatenate([words, embedded], axis=-1)
            return gather(words, self.scheme.anchor_of(table["start"], table["end"]))
        parts = [gather(words, table["start"]), gather(words, table["end"] - 1)]
        if labels is not None:
            parts.append(self.label_embedding(table["type"]).astype(words.dtype))
        return jnp.concatenate(parts, axis=-1)

    def encode(self, batch, deterministic: bool = True) -> dict:
        """Stage one, every model of an ensemble on its own: ``ner_logits`` (not for ``re``)
        and ``pair_words`` [B, L, D'], the word features the pair scorer reads (the RE
        encoder's for ``pipeline``; none for ``ner``)."""
        words, context = self.words(self.encoder, batch, deterministic)
        out = {}
        if self.method != "re":
            out["ner_logits"] = self.ner(words, deterministic, context, word_segments(batch))
        if self.method == "pipeline":
            out["pair_words"], _ = self.words(self.re_encoder, batch, deterministic)
        elif self.method != "ner":
            out["pair_words"] = words
        return out

    def entity_labels(self, ner_logits, batch, label_source: str):
        """What entity features are built with (see :meth:`entity_features`): for joint BIO
        the gold or argmax tags [B, L], for the joint span scheme True (the table's types),
        else None."""
        if self.method != "joint":
            return None
        if self.scheme.scores_spans:
            return True
        if label_source == "gold" and "ner_labels" in batch:
            return batch["ner_labels"]
        return jnp.argmax(jax.lax.stop_gradient(ner_logits), axis=-1)

    def relation_logits(self, pair_words, table, labels, deterministic: bool = True):
        """Stage two: relation logits [B, N, N, R] between the entities of ``table`` (the
        decoded table may come from an ensemble's averaged NER probabilities)."""
        scorer = self.re_pairs if self.method == "pipeline" else self.pairs
        features = self.entity_features(pair_words, table, labels)
        return scorer(features, deterministic, self.options.dropout_rate)

    def __call__(
        self,
        batch,
        deterministic: bool = True,
        label_source: str = "predicted",
        tables: tuple[str, ...] = ("gold",),
    ):
        if label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source {label_source!r} not in {LABEL_SOURCES}")
        stage = self.encode(batch, deterministic)
        out = {k: v for k, v in stage.items() if k == "ner_logits"}
        if self.method == "ner":
            return out
        gold = gold_table(batch)
        if self.method == "re":
            out["predicted"] = gold_as_decoded(batch)
        elif {"predicted", "incremental"} & set(tables):
            logits = jax.lax.stop_gradient(out["ner_logits"])
            out["predicted"] = self.scheme.decode(
                logits, batch["word_mask"], self.max_entities, batch.get("word_segment")
            )
        labels = self.entity_labels(out.get("ner_logits"), batch, label_source)
        for name in tables:
            if name == "gold":
                table = gold
            elif name == "predicted":
                table = out["predicted"]
            else:
                table = incremental_table(gold, out["predicted"])
            out[f"table_{name}"] = table
            out[f"re_logits_{name}"] = self.relation_logits(
                stage["pair_words"], table, labels, deterministic
            )
        return out

    def encoder_prefixes(self) -> tuple[tuple[str, ...], ...]:
        """Where pre-trained BERT weights go in this model's params."""
        return (("encoder",), ("re_encoder",)) if self.method == "pipeline" else (("encoder",),)
