"""Documents to model examples: one criterion (line) per example, BIO tags at wordpiece level.

Policies for what BIO cannot hold (each drop is counted under the reason in quotes):

* "crosses_line": an entity whose span runs past the end of its criterion line.
* "discontinuous": an entity of several fragments, unless the slice from its first start to
  its last end is exactly its mention (then it is kept, repaired "merged_fragments").
* "token_boundary": an entity edge falls inside a wordpiece, so no wordpiece span has exactly
  its text.
* "overlap": nested or overlapping entities; ``overlap_policy`` picks the non-overlapping
  subset to keep ("most_relations": maximum total weight, weight = 1 + relations of the
  entity, by weighted interval scheduling; "longest"/"shortest": greedy by length).
* Criteria longer than ``max_length`` wordpieces are split into windows at token boundaries
  that cut no kept entity (preferring a cut after punctuation); "window_too_short" counts an
  entity longer than a window (it cannot happen at length 128 on Chia).
* Relations lose an argument ("argument_<reason of the entity>"), join two lines
  ("crosses_line") or two windows ("crosses_window"), relate an entity to itself
  ("self_relation"), repeat one already kept ("duplicate") or give a pair already labelled a
  second label ("conflicting_label"; the first in file order wins).
"""

from __future__ import annotations

import bisect
import dataclasses
import re

import numpy as np

from jointre_jax.data.accounting import Accounting
from jointre_jax.data.brat import Document, Entity
from jointre_jax.data.schema import RelationCandidate, Schema

_LINE_BREAK = re.compile(r"\r\n|\n|\r")
_CUT_AFTER = frozenset(".;,:!?)")
OVERLAP_POLICIES = ("most_relations", "longest", "shortest")
ANCHORS = ("first", "last")


@dataclasses.dataclass(frozen=True)
class EntitySpan:
    """A kept entity inside an example.

    ``start``/``end``: wordpiece indices into the example's ``input_ids`` ([CLS] is index 0),
    end exclusive. ``char_start``/``char_end``: offsets into the example's ``text``.
    ``label``: 0-based entity type id.
    """

    start: int
    end: int
    label: int
    char_start: int
    char_end: int
    ann_id: str


@dataclasses.dataclass(frozen=True)
class Example:
    """One model input: a criterion line, or one window of a long one.

    ``input_ids`` int32 [n] with [CLS] ... [SEP]; ``offsets`` int32 [n, 2] character offsets
    of each wordpiece into ``text`` ((0, 0) for special tokens); ``ner_tags`` int32 [n] BIO ids
    (0 on special tokens); ``relations``: (head entity index, tail entity index, label id >= 1)
    into ``entities``. ``text`` is the whole criterion line; ``line_start`` its character
    offset in the document; ``line`` its 1-based line number.
    """

    doc_id: str
    line: int
    line_start: int
    window: int
    text: str
    input_ids: np.ndarray
    offsets: np.ndarray
    ner_tags: np.ndarray
    entities: tuple[EntitySpan, ...]
    relations: tuple[tuple[int, int, int], ...]

    @property
    def length(self) -> int:
        return len(self.input_ids)

    def anchor(self, entity_index: int, anchor: str = "first") -> int:
        """Wordpiece index where relations of entity ``entity_index`` live."""
        span = self.entities[entity_index]
        return span.start if anchor == "first" else span.end - 1


def split_lines(text: str) -> list[tuple[int, int, int]]:
    """(1-based line number, start, end) of each line of ``text``; end excludes the break."""
    lines, start, number = [], 0, 1
    for match in _LINE_BREAK.finditer(text):
        lines.append((number, start, match.start()))
        start, number = match.end(), number + 1
    lines.append((number, start, len(text)))
    return lines


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


def choose_windows(num_tokens: int, budget: int, spans, token_texts) -> list[tuple[int, int]]:
    """Cuts ``num_tokens`` wordpieces into windows of at most ``budget`` tokens.

    A cut at i (between tokens i-1 and i) is allowed when no span in ``spans`` (token
    [start, end)) contains both; among allowed cuts in the second half of a window, the last
    one after punctuation wins, else the last allowed one. Returns [(start, end)] covering
    0..num_tokens. If no cut is allowed (a span longer than the budget) it cuts at the budget.
    """
    blocked = np.zeros(num_tokens + 1, dtype=bool)
    for start, end in spans:
        blocked[start + 1 : end] = True
    windows, start = [], 0
    while num_tokens - start > budget:
        limit = start + budget
        allowed = [i for i in range(start + 1, limit + 1) if not blocked[i]]
        late = [i for i in allowed if i - start >= budget // 2]
        after_punct = [i for i in late if token_texts[i - 1] in _CUT_AFTER]
        cut = (after_punct or late or allowed or [limit])[-1]
        windows.append((start, cut))
        start = cut
    windows.append((start, num_tokens))
    return windows


class Encoder:
    """Turns documents into :class:`Example` lists with a fast (offset-mapping) tokenizer."""

    def __init__(
        self,
        schema: Schema,
        tokenizer,
        max_length: int = 128,
        anchor: str = "first",
        overlap_policy: str = "most_relations",
        lenient: bool = True,
    ):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("a fast tokenizer (with offset mapping) is required")
        if anchor not in ANCHORS:
            raise ValueError(f"anchor {anchor!r} not in {ANCHORS}")
        if overlap_policy not in OVERLAP_POLICIES:
            raise ValueError(f"overlap_policy {overlap_policy!r} not in {OVERLAP_POLICIES}")
        if max_length < 3:
            raise ValueError("max_length must leave room for [CLS] x [SEP]")
        self.schema = schema
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.anchor = anchor
        self.overlap_policy = overlap_policy
        self.lenient = lenient

    def tokenize(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Wordpiece ids int32 [n] and character offsets int32 [n, 2] of each text (no specials)."""
        if not texts:
            return []
        enc = self.tokenizer(
            texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        return [
            (np.asarray(ids, np.int32), np.asarray(offs, np.int32).reshape(-1, 2))
            for ids, offs in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        ]

    def encode_document(self, doc: Document, acc: Accounting) -> list[Example]:
        """Examples of ``doc``; each kept-type annotation is kept or counted in ``acc``."""
        acc.documents += 1
        entities, relations = self.schema.collect(doc, acc, self.lenient)
        lines = [(n, a, b) for n, a, b in split_lines(doc.text) if doc.text[a:b].strip()]
        acc.criteria += len(lines)
        line_starts = [a for _, a, _ in lines]
        dropped: dict[str, str] = {}  # entity id -> drop reason
        per_line: dict[int, list[tuple[Entity, int, int]]] = {}
        for entity in entities:
            k = bisect.bisect_right(line_starts, entity.start) - 1
            if k < 0 or entity.start >= lines[k][2]:
                dropped[entity.id] = "crosses_line"  # starts on a line break: no line holds it
            elif entity.end > lines[k][2]:
                dropped[entity.id] = "crosses_line"
            elif len(entity.fragments) > 1:
                if doc.text[entity.start : entity.end] == entity.text:
                    acc.repaired["merged_fragments"] += 1
                    per_line.setdefault(k, []).append((entity, entity.start, entity.end))
                else:
                    dropped[entity.id] = "discontinuous"
            else:
                per_line.setdefault(k, []).append((entity, entity.start, entity.end))

        relation_weight: dict[str, int] = {}
        for rel in relations:
            for arg in (rel.head, rel.tail):
                relation_weight[arg] = relation_weight.get(arg, 0) + 1

        tokenized = self.tokenize([doc.text[a:b] for _, a, b in lines])
        placed: dict[str, tuple[int, int, int]] = {}  # entity id -> (line k, window, index)
        examples: list[Example] = []
        for k, (number, line_start, line_end) in enumerate(lines):
            ids, offsets = tokenized[k]
            text = doc.text[line_start:line_end]
            starts = {int(a): i for i, (a, b) in enumerate(offsets) if b > a}
            ends = {int(b): i + 1 for i, (a, b) in enumerate(offsets) if b > a}
            aligned = []  # (entity, token start, token end, char start, char end)
            for entity, a, b in per_line.get(k, []):
                a, b = a - line_start, b - line_start
                if a in starts and b in ends and starts[a] < ends[b]:
                    aligned.append((entity, starts[a], ends[b], a, b))
                else:
                    dropped[entity.id] = "token_boundary"
            keep = select_non_overlapping(
                [(s, e) for _, s, e, _, _ in aligned],
                [1 + relation_weight.get(ent.id, 0) for ent, *_ in aligned],
                self.overlap_policy,
            )
            for i, item in enumerate(aligned):
                if i not in keep:
                    dropped[item[0].id] = "overlap"
            kept = sorted((aligned[i] for i in keep), key=lambda item: item[1])
            token_texts = [text[a:b] for a, b in offsets]
            windows = choose_windows(
                len(ids), self.max_length - 2, [(s, e) for _, s, e, _, _ in kept], token_texts
            )
            if len(windows) > 1:
                acc.windowed_criteria += 1
            for w, (w_start, w_end) in enumerate(windows):
                spans = []
                for entity, s, e, a, b in kept:
                    if s >= w_start and e <= w_end:
                        placed[entity.id] = (k, w, len(spans))
                        label = self.schema.entity_type_id(entity.type)
                        spans.append(
                            EntitySpan(s - w_start + 1, e - w_start + 1, label, a, b, entity.id)
                        )
                    elif s < w_end and e > w_start:
                        dropped[entity.id] = "window_too_short"
                examples.append(
                    self._example(
                        doc, number, line_start, w, text, ids, offsets, (w_start, w_end), spans
                    )
                )
        acc.entities.kept += len(placed)
        for reason in dropped.values():
            acc.entities.drop(reason)
        acc.examples += len(examples)
        reasons = {e.id: e.problem for e in doc.entities.values() if e.problem}
        reasons.update(dropped)
        self._attach_relations(relations, placed, reasons, examples, lines, acc)
        return examples

    def _example(self, doc, number, line_start, window, text, ids, offsets, bounds, spans):
        w_start, w_end = bounds
        specials = self.tokenizer
        input_ids = np.concatenate(
            [[specials.cls_token_id], ids[w_start:w_end], [specials.sep_token_id]]
        ).astype(np.int32)
        offs = np.zeros((len(input_ids), 2), np.int32)
        offs[1:-1] = offsets[w_start:w_end]
        tags = np.zeros(len(input_ids), np.int32)
        for span in spans:
            tags[span.start] = 1 + 2 * span.label
            tags[span.start + 1 : span.end] = 2 + 2 * span.label
        return Example(
            doc.doc_id, number, line_start, window, text, input_ids, offs, tags, tuple(spans), ()
        )

    def _attach_relations(self, relations, placed, reasons, examples, lines, acc):
        """Adds relation triples to examples in place (examples are frozen: rebuilt)."""
        index = {(ex.line, ex.window): i for i, ex in enumerate(examples)}
        triples: dict[int, dict[tuple[int, int], int]] = {}
        seen: set[tuple[str, str, int]] = set()
        for rel in relations:
            reason = self._relation_problem(rel, placed, reasons, seen)
            if reason:
                acc.relations.drop(reason)
                continue
            seen.add((rel.head, rel.tail, rel.label))
            (k, w, h), (_, _, t) = placed[rel.head], placed[rel.tail]
            pairs = triples.setdefault(index[(lines[k][0], w)], {})
            if (h, t) in pairs:
                acc.relations.drop("conflicting_label")
                continue
            pairs[(h, t)] = rel.label
            acc.relations.kept += 1
        for i, pairs in triples.items():
            rels = tuple(sorted((h, t, label) for (h, t), label in pairs.items()))
            examples[i] = dataclasses.replace(examples[i], relations=rels)

    @staticmethod
    def _relation_problem(rel: RelationCandidate, placed, reasons, seen) -> str | None:
        if rel.head == rel.tail:
            return "self_relation"
        for arg in (rel.head, rel.tail):
            if arg not in placed:
                return f"argument_{reasons[arg]}"
        if placed[rel.head][0] != placed[rel.tail][0]:
            return "crosses_line"
        if placed[rel.head][1] != placed[rel.tail][1]:
            return "crosses_window"
        if (rel.head, rel.tail, rel.label) in seen:
            return "duplicate"
        return None
