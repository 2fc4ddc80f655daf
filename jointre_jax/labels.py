"""The entity label schemes: one owner for tag ids, spans from tags, anchors and decoding.

Everything here counts in **words**: a word is one pre-tokenized word of the encoder's tokenizer
(its ``word_ids``), so an entity never begins or ends inside a word. An entity is a half-open word
span ``[start, end)`` with a 0-based entity type id ``label``.

Two schemes implement one small interface (:class:`EntityScheme`) that the encoder (which gold
entities an example keeps), the batcher (the NER targets), the model (the NER head's width), the
loss and the decoder all call:

* :class:`BioScheme` (``ner_decoder="bio"``, the paper's): one BIO tag per word. Tag ids: 0 =
  "O", ``1 + 2k`` = "B-<type k>", ``2 + 2k`` = "I-<type k>". Spans are read from tags as seqeval
  does (``I-x`` continues an entity only right after ``B-x`` or ``I-x``). Nested and overlapping
  entities cannot be held; ``overlap_policy`` picks the subset kept. An entity's relations are
  read at its anchor word (its first or last word).
* :class:`SpanScheme` (``ner_decoder="span"``): every word span of at most ``max_width`` words
  gets one of ``types + 1`` classes (0 = no entity), as in NER as dependency parsing (Yu et al.
  2020). Decoding keeps the highest-scoring spans whose boundaries do not cross; ``nesting``
  says which nested spans may be kept beside each other ("any"; "other_type": not inside one of
  its own type; "none": flat). Two entities on one word span cannot both be held (one class per
  span).

Decoding inside jit returns an **entity table** of static size N (``max_entities``): int32 [B, N]
``start``, ``end``, ``type`` (1 + type id, 0 for an empty slot), bool ``mask``, float32 ``score``,
sorted by (start, end); and int32 [B] ``overflow``, the decoded entities that did not fit.
"""

from __future__ import annotations

import bisect
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

DECODERS = ("bio", "span")
SPAN_NESTING = ("any", "other_type", "none")
OVERLAP_POLICIES = ("most_relations", "longest", "shortest")
ANCHORS = ("first", "last")


# ----------------------------------------------------------------------- shared helpers
def select_non_overlapping(spans, weights, policy: str) -> list[int]:
    """Indices of a non-overlapping subset of half-open ``spans`` [(start, end)].

    "most_relations": maximum total ``weights`` (weighted interval scheduling; ties go to the
    earlier-ending, then earlier-listed spans); "longest"/"shortest": greedy by length.
    Returns the chosen indices in ascending order.
    """
    if policy not in OVERLAP_POLICIES:
        raise ValueError(f"overlap_policy {policy!r} not in {OVERLAP_POLICIES}")
    order = sorted(range(len(spans)), key=lambda i: (spans[i][1], spans[i][0], i))
    if policy != "most_relations":
        sign = -1 if policy == "longest" else 1
        greedy = sorted(
            range(len(spans)), key=lambda i: (sign * (spans[i][1] - spans[i][0]), spans[i][0], i)
        )
        chosen: list[int] = []
        for i in greedy:
            a, b = spans[i]
            if all(b <= spans[j][0] or spans[j][1] <= a for j in chosen):
                chosen.append(i)
        return sorted(chosen)
    ends = [spans[i][1] for i in order]
    best = [0.0] * (len(order) + 1)  # best[k]: best weight using the first k spans by end
    take = [False] * (len(order) + 1)
    for k, i in enumerate(order, start=1):
        previous = bisect.bisect_right(ends, spans[i][0], 0, k - 1)
        with_it = best[previous] + weights[i]
        take[k] = with_it > best[k - 1]
        best[k] = with_it if take[k] else best[k - 1]
    chosen, k = [], len(order)
    while k > 0:
        if take[k]:
            i = order[k - 1]
            chosen.append(i)
            k = bisect.bisect_right(ends, spans[i][0], 0, k - 1)
        else:
            k -= 1
    return sorted(chosen)


def crossing(start_a, end_a, start_b, end_b):
    """True where half-open spans a and b overlap without one containing the other."""
    return ((start_a < start_b) & (start_b < end_a) & (end_a < end_b)) | (
        (start_b < start_a) & (start_a < end_b) & (end_b < end_a)
    )


def segment_starts(word_segment):
    """bool [B, L]: True where a word's segment (``word_segment`` int [B, L], 0 for no word)
    is not that of the word before it, at the first word of a row included: where a packed
    row's next criterion begins. Of the row reversed (``word_segment[:, ::-1]``): where each
    criterion ends."""
    return word_segment != jnp.pad(word_segment, ((0, 0), (1, 0)))[:, :-1]


def decide(probs, threshold: float = 0.0):
    """(label, score) from class probabilities [..., C] whose class 0 is "none".

    ``threshold`` 0: the most probable class (argmax). Otherwise: the most probable non-none
    class wherever the probability of not being "none" (1 - P(none)) reaches ``threshold``,
    else 0. ``score`` is the probability of the chosen class.
    """
    if not threshold:
        label = jnp.argmax(probs, -1)
    else:
        best = jnp.argmax(probs[..., 1:], -1) + 1
        label = jnp.where(1.0 - probs[..., 0] >= threshold, best, 0)
    return label, jnp.take_along_axis(probs, label[..., None], -1)[..., 0]


def compact_table(keep, start, end, kind, score, max_entities: int) -> dict:
    """The entity table of the ``keep`` items of [B, M] arrays, sorted by (start, end).

    Returns the table of the module docstring (N = ``max_entities``); ``overflow`` counts the
    kept items beyond N (the last ones in (start, end) order).
    """
    if keep.shape[-1] < max_entities:  # fewer candidates than slots: pad with empty ones
        pad = ((0, 0), (0, max_entities - keep.shape[-1]))
        keep, start, end, kind, score = (jnp.pad(x, pad) for x in (keep, start, end, kind, score))
    big = jnp.iinfo(jnp.int32).max
    width = jnp.max(end) + 1
    key = jnp.where(keep, start * width + end, big)
    order = jnp.argsort(key, axis=-1, stable=True)[:, :max_entities]
    take = lambda x: jnp.take_along_axis(x, order, axis=1)  # noqa: E731
    mask = take(keep)
    return {
        "start": jnp.where(mask, take(start), 0).astype(jnp.int32),
        "end": jnp.where(mask, take(end), 0).astype(jnp.int32),
        "type": jnp.where(mask, take(kind), 0).astype(jnp.int32),
        "mask": mask,
        "score": jnp.where(mask, take(score), 0.0).astype(jnp.float32),
        "overflow": jnp.maximum(jnp.sum(keep, axis=1) - max_entities, 0).astype(jnp.int32),
    }


def gold_table(batch) -> dict:
    """The gold entity table of a batch of ``data.batching`` (no ``score``/``overflow``)."""
    return {
        "start": batch["entity_start"],
        "end": batch["entity_end"],
        "type": batch["entity_type"],
        "mask": batch["entity_type"] > 0,
    }


def gold_as_decoded(batch) -> dict:
    """The gold table with ``score`` 1 on its entities: what a model without NER (standalone
    RE) "decodes"."""
    gold = gold_table(batch)
    return {**gold, "score": gold["mask"].astype(jnp.float32)}


# -------------------------------------------------------------------------------- schemes
@dataclasses.dataclass(frozen=True)
class EntityScheme:
    """What every label scheme provides; see :class:`BioScheme` and :class:`SpanScheme`."""

    num_types: int

    name = ""
    nested = False
    # True: the NER head scores every word span ([B, L, L, classes] logits) and an entity's
    # features are its boundary words' and its type's; False: one tag per word ([B, L, tags])
    # and an entity's features are its anchor word's with the tags' embedding.
    scores_spans = False
    # The decision rule of span and relation classes (see :func:`decide`); 0 = argmax.
    threshold = 0.0
    # Discontinuous entities as linked fragments (span only; see :func:`merge_fragments`).
    fragments = False
    extra_relations = 0

    @property
    def num_classes(self) -> int:
        """Classes of the NER head at each position (BIO tags, or entity types + 1)."""
        raise NotImplementedError

    def select(self, spans, weights) -> dict[int, str]:
        """Which gold entities an example can hold: {index of a span left out: reason}.

        ``spans``: [(start word, end word)]; ``weights``: 1 + relations of each entity.
        """
        raise NotImplementedError

    def decode(self, ner_logits, word_mask, max_entities: int, word_segment=None) -> dict:
        """The entity table (module docstring) of the NER logits, inside jit.

        ``word_segment`` int [B, L] (packed rows): no entity spans two segments.
        """
        raise NotImplementedError

    def targets(self, entities, num_words: int, length: int) -> dict[str, np.ndarray]:
        """Host-side NER target arrays of one example, one value per word slot ([length]);
        may be empty."""
        return {}


@dataclasses.dataclass(frozen=True)
class BioScheme(EntityScheme):
    """One BIO tag per word; see the module docstring."""

    overlap_policy: str = "most_relations"
    anchor: str = "first"
    threshold: float = 0.0

    name = "bio"
    nested = False

    def __post_init__(self):
        if self.overlap_policy not in OVERLAP_POLICIES:
            raise ValueError(f"overlap_policy {self.overlap_policy!r} not in {OVERLAP_POLICIES}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor {self.anchor!r} not in {ANCHORS}")

    @property
    def num_classes(self) -> int:
        return 1 + 2 * self.num_types

    def tag_names(self, types) -> tuple[str, ...]:
        """["O", "B-T0", "I-T0", "B-T1", ...] for type names ``types``."""
        return ("O",) + tuple(f"{p}-{t}" for t in types for p in ("B", "I"))

    def anchor_of(self, start, end):
        """Word where the relations of entity [start, end) live (numpy or jnp)."""
        return start if self.anchor == "first" else end - 1

    def select(self, spans, weights) -> dict[int, str]:
        keep = set(select_non_overlapping(spans, weights, self.overlap_policy))
        return {i: "overlap" for i in range(len(spans)) if i not in keep}

    def tags(self, entities, length: int) -> np.ndarray:
        """int32 [length] BIO tag ids of non-overlapping (start, end, label) word spans."""
        tags = np.zeros(length, np.int32)
        for start, end, label in entities:
            tags[start] = 1 + 2 * label
            tags[start + 1 : end] = 2 + 2 * label
        return tags

    def targets(self, entities, num_words: int, length: int) -> dict[str, np.ndarray]:
        return {"ner_labels": self.tags([(e.start, e.end, e.label) for e in entities], length)}

    @staticmethod
    def spans(tags, num_words: int) -> list[tuple[int, int, int]]:
        """(start, end, type id) word spans of BIO tag ids over words 0..num_words-1."""
        spans, current = [], None
        for i in range(num_words):
            tag = int(tags[i])
            kind = (tag - 1) // 2 if tag else -1
            inside = tag > 0 and (tag - 1) % 2 == 1
            if current and inside and kind == current[2]:
                current[1] = i + 1
                continue
            if current:
                spans.append(tuple(current))
            current = [i, i + 1, kind] if tag else None
        if current:
            spans.append(tuple(current))
        return spans

    @staticmethod
    def decode_tags(tags, word_mask, word_segment=None):
        """Entities of BIO tags at their first word, vectorised (jnp).

        Args:
          tags: int [B, L] tag ids; word_mask: bool [B, L] (False positions count as O);
          word_segment: int [B, L] or None (packed rows: an I- tag never continues an entity
            of the segment before).
        Returns:
          dict of [B, L]: ``first`` bool (an entity starts here), ``end`` int32 (its end, -1
          elsewhere), ``type`` int32 (1 + type id, 0 elsewhere).
        """
        tags = jnp.where(word_mask, tags, 0)
        length = tags.shape[-1]
        kind = jnp.where(tags > 0, (tags - 1) // 2 + 1, 0)
        is_inside = (tags > 0) & ((tags - 1) % 2 == 1)
        previous = jnp.pad(kind, ((0, 0), (1, 0)))[:, :-1]
        continues = is_inside & (previous == kind)
        if word_segment is not None:
            continues &= ~segment_starts(word_segment)
        starts = (tags > 0) & ~continues
        positions = jnp.arange(length)
        breaks = jnp.where(continues, length, positions)
        next_break = jax.lax.cummin(
            jnp.pad(breaks, ((0, 0), (0, 1)), constant_values=length), axis=1, reverse=True
        )
        ends = next_break[:, 1:]  # for a start at i: first k > i that does not continue it
        return {
            "first": starts,
            "end": jnp.where(starts, ends, -1).astype(jnp.int32),
            "type": jnp.where(starts, kind, 0).astype(jnp.int32),
        }

    def decode(self, ner_logits, word_mask, max_entities: int, word_segment=None) -> dict:
        probs = jax.nn.softmax(ner_logits.astype(jnp.float32), -1)
        tags = jnp.argmax(probs, -1)
        found = self.decode_tags(tags, word_mask, word_segment)
        positions = jnp.broadcast_to(jnp.arange(tags.shape[-1]), tags.shape)
        score = jnp.max(probs, -1)
        return compact_table(
            found["first"], positions, found["end"], found["type"], score, max_entities
        )


@dataclasses.dataclass(frozen=True)
class SpanScheme(EntityScheme):
    """One class per word span of at most ``max_width`` words; see the module docstring."""

    max_width: int = 16
    threshold: float = 0.0
    nesting: str = "any"
    fragments: bool = False

    name = "span"
    scores_spans = True
    nested = True

    def __post_init__(self):
        if self.max_width < 1:
            raise ValueError(f"max_span_width must be >= 1, not {self.max_width}")
        if self.nesting not in SPAN_NESTING:
            raise ValueError(f"span_nesting {self.nesting!r} not in {SPAN_NESTING}")

    @property
    def num_classes(self) -> int:
        return 1 + self.num_types * (2 if self.fragments else 1)

    @property
    def extra_relations(self) -> int:
        """Relation outputs beyond the schema's: the fragment link (last label), if any."""
        return 1 if self.fragments else 0

    def select(self, spans, weights) -> dict[int, str]:
        left_out = {}
        owner: dict[tuple[int, int], int] = {}
        for i in sorted(range(len(spans)), key=lambda i: (-weights[i], i)):
            start, end = spans[i]
            if end - start > self.max_width:
                left_out[i] = "too_wide"
            elif (start, end) in owner:
                left_out[i] = "same_span"
            else:
                owner[(start, end)] = i
        return left_out

    def span_mask(self, word_mask, word_segment=None):
        """bool [B, L, L]: [b, i, j] is a candidate span from word i to word j (inclusive);
        with ``word_segment`` [B, L] (packed rows), i and j in one segment."""
        length = word_mask.shape[-1]
        i = jnp.arange(length)[:, None]
        j = jnp.arange(length)[None, :]
        width_ok = (j >= i) & (j - i < self.max_width)
        mask = width_ok[None] & word_mask[:, :, None] & word_mask[:, None, :]
        if word_segment is not None:
            mask &= word_segment[:, :, None] == word_segment[:, None, :]
        return mask

    @staticmethod
    def span_targets(table, length: int):
        """int32 [B, L, L]: 1 + type of the gold entity on span (i, j inclusive), else 0."""
        batch = table["start"].shape[0]
        rows = jnp.broadcast_to(jnp.arange(batch)[:, None], table["start"].shape)
        starts = jnp.where(table["mask"], table["start"], length)  # out of range: dropped
        return (
            jnp.zeros((batch, length, length), jnp.int32)
            .at[rows, starts, table["end"] - 1]
            .set(table["type"], mode="drop")
        )

    def conflicts(self, start, end, kind):
        """bool [B, K, K]: candidates m and n (half-open word spans [B, K], classes [B, K])
        cannot both be kept: their boundaries cross; with ``nesting`` "other_type", also one
        inside the other with the same type; with "none", any overlap."""
        a_start, a_end, a_kind = start[:, :, None], end[:, :, None], kind[:, :, None]
        b_start, b_end, b_kind = start[:, None, :], end[:, None, :], kind[:, None, :]
        conflict = crossing(a_start, a_end, b_start, b_end)
        if self.nesting != "any":
            overlap = (a_start < b_end) & (b_start < a_end)
            conflict |= overlap & (a_kind == b_kind) if self.nesting == "other_type" else overlap
        return conflict

    def decode(self, ner_logits, word_mask, max_entities: int, word_segment=None) -> dict:
        batch, length = word_mask.shape
        probs = jax.nn.softmax(ner_logits.astype(jnp.float32), -1)
        label, best = decide(probs, self.threshold)
        valid = self.span_mask(word_mask, word_segment) & (label > 0)
        score = jnp.where(valid, best, -1.0).reshape(batch, -1)
        count = min(max_entities, length * length)
        top, index = jax.lax.top_k(score, count)  # highest first
        start, end = index // length, index % length + 1
        kind = jnp.take_along_axis(label.reshape(batch, -1), index, axis=1)
        candidate = top >= 0
        conflict = self.conflicts(start, end, kind)

        def accept(n, accepted):  # candidate n unless it conflicts with a better one accepted
            ok = candidate[:, n] & ~jnp.any(accepted & conflict[:, n, :], axis=1)
            return accepted.at[:, n].set(ok)

        accepted = jax.lax.fori_loop(0, count, accept, jnp.zeros_like(candidate))
        table = compact_table(accepted, start, end, kind, top, max_entities)
        # Decoded entities beyond the candidates that fit count as overflow too.
        beyond = jnp.maximum(jnp.sum(valid.reshape(batch, -1), axis=1) - count, 0)
        table["overflow"] = table["overflow"] + beyond.astype(jnp.int32)
        return table


def fragment_link_label(num_relation_labels: int) -> int:
    """The relation label id of a fragment link: one past the schema's ``num_relation_labels``
    (the model's extra, last relation output; :attr:`SpanScheme.extra_relations`)."""
    return num_relation_labels


def merge_fragments(spans, labels, relations, num_types: int, link_label: int):
    """Entities with their fragments, from a scheme's entities and fragment links (host side).

    With ``fragments``, the span scheme holds a discontinuous entity of type k as one span of
    class "fragment of k" (label ``num_types + k``) per fragment, the fragments linked in text
    order by relations of label ``link_label`` (the model's last relation output); the
    entity's own relations are those of its first fragment. This reads them back, for gold and
    predictions alike: every maximal chain of links from a fragment no link enters is one
    entity (a link joins fragments of one type, forward in the text); fragments on no chain
    are no entity.

    Args:
      spans: [(start, end)] word spans; labels: [int] 0-based labels (>= num_types: fragment);
      relations: [(head, tail, label, ...)] into ``spans``.
    Returns:
      (entities, relations, first): entities [(fragments ((start, end), ...), type)] sorted;
      relations [(head, tail, label, ...)] into them, links left out, a fragment's relations
      given to every entity it begins; first[i]: index into ``spans`` of entity i's first
      fragment (or of the entity itself).
    """
    is_fragment = [label >= num_types for label in labels]
    links: dict[int, list[int]] = {}
    entered = set()
    for head, tail, label, *_ in relations:
        if (
            label == link_label
            and is_fragment[head]
            and is_fragment[tail]
            and labels[head] == labels[tail]
            and spans[head][1] <= spans[tail][0]
        ):
            links.setdefault(head, []).append(tail)
            entered.add(tail)
    found = {}  # (fragments, type) -> index of the first fragment
    for i, (span, label) in enumerate(zip(spans, labels, strict=True)):
        if not is_fragment[i]:
            found.setdefault(((tuple(span),), label), i)
        elif i in links and i not in entered:
            stack = [(i, (tuple(span),))]
            while stack:
                node, path = stack.pop()
                for nxt in links.get(node, ()):
                    stack.append((nxt, path + (tuple(spans[nxt]),)))
                if node not in links:
                    found.setdefault((path, label - num_types), i)
    order = sorted(found)
    entities = [(fragments, label) for fragments, label in order]
    first = [found[key] for key in order]
    owners: dict[int, list[int]] = {}
    for n, i in enumerate(first):
        owners.setdefault(i, []).append(n)
    merged = []
    for head, tail, label, *rest in relations:
        if label == link_label:
            continue
        for a in owners.get(head, ()):
            for b in owners.get(tail, ()):
                if a != b:
                    merged.append((a, b, label, *rest))
    return entities, merged, first


# The fields of config.model that decide a scheme's classes (its outputs' shapes), which the
# members of an ensemble must share; the decision threshold and nesting are decoding options.
SCHEME_FIELDS = ("ner_decoder", "max_span_width", "discontinuous")


def make_scheme(config) -> EntityScheme:
    """The scheme of ``config.model.ner_decoder`` with its options from ``config``."""
    name = str(config.model.ner_decoder)
    num_types = len(config.data.entity_types)
    threshold = float(config.model.decision_threshold)
    if name == "bio":
        policy, anchor = str(config.data.overlap_policy), str(config.data.anchor)
        return BioScheme(num_types, policy, anchor, threshold)
    if name == "span":
        nesting = str(config.model.span_nesting)
        fragments = bool(config.model.discontinuous)
        width = int(config.model.max_span_width)
        return SpanScheme(num_types, width, threshold, nesting, fragments)
    if config.model.discontinuous:
        raise ValueError("model.discontinuous needs the span decoder (model.ner_decoder='span')")
    raise ValueError(f"model.ner_decoder {name!r} not in {DECODERS}")


# ------------------------------------------------- span tables (per example, by width)
def _span_grid(num_words: int, width: int):
    """(starts, ends, inside), int [w, W] x2 and bool [w, W]: entry [s, k] is the span from
    word s to word s + k (inclusive), inside the example when s + k < w."""
    starts = np.broadcast_to(np.arange(num_words)[:, None], (num_words, width))
    ends = starts + np.arange(width)[None, :]
    return starts, ends, ends < num_words


def span_table(probs: np.ndarray, num_words: int, width: int) -> np.ndarray:
    """The spans of one example, [w, W, C], from its block of a row's span table.

    Args:
      probs: [>= w, >= w, C] distributions of spans (i, j inclusive), the example's first word
        at (0, 0).
    Returns:
      float16 [w, W, C]: [s, k] is span (s, s + k); zeros where s + k >= w.
    """
    starts, ends, inside = _span_grid(num_words, width)
    table = probs[starts, np.minimum(ends, max(num_words - 1, 0))]
    return np.where(inside[..., None], table, 0).astype(np.float16)


def place_span_table(target: np.ndarray, table: np.ndarray, words: int) -> None:
    """Writes an example's ``table`` [w, W, C] (:func:`span_table`) into ``target``
    [L, L, C] (one row's span table) with its first word at ``words`` (in place)."""
    starts, ends, inside = _span_grid(*table.shape[:2])
    target[starts[inside] + words, ends[inside] + words] = table[inside]
