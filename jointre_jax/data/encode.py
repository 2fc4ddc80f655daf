"""Documents to model examples: one criterion (line) per example, entities over whole words.

A *word* is one pre-tokenized word of the encoder's tokenizer (its ``word_ids``: BERT splits on
whitespace and punctuation, so "I-II" is three words and "Anesthesiologists" one). Words are the
unit of every entity boundary: an example lists its words (character offsets, first wordpiece),
and its entities are word spans. The label scheme (:mod:`jointre_jax.labels`, BIO or span) says
which gold entities an example can hold.

Policies for what an example cannot hold (each drop is counted under the reason in quotes):

* "crosses_line": an entity whose span runs past the end of its criterion line.
* "discontinuous": an entity of several fragments, unless the slice from its first start to
  its last end is exactly its mention (then it is kept, repaired "merged_fragments"). With the
  span scheme's ``fragments`` (``model.discontinuous``) it is kept instead, as one span of
  class "fragment of its type" (label ``num_types + type``) per fragment, shared by the
  entities with that fragment, and fragment links (the schema's relation labels + 1) from each
  fragment to the next; its own relations are its first fragment's. "fragments_ambiguous":
  one that :func:`~jointre_jax.labels.merge_fragments` would not read back exactly beside the
  others of its line (a first fragment that another one continues or shares).
* "inside_word": an entity edge falls inside a word (0.4% of Chia's entities; most are parts of
  a hyphen-free compound or a unit glued to a number). Whole words are the unit: the entity is
  dropped from the training targets and, scored against the corpus gold, counts as a miss.
* BIO only, "overlap": nested or overlapping entities; ``overlap_policy`` picks the
  non-overlapping subset to keep ("most_relations": maximum total weight, weight = 1 +
  relations of the entity, by weighted interval scheduling; "longest"/"shortest": greedy).
* Span only, "same_span": a second entity on the same words (one class per span; the one with
  more relations is kept); "too_wide": an entity of more than ``max_span_width`` words.
* Context (``context_length`` > 0): each example also reads up to that many wordpieces of the
  criteria around its line (the lines before it, then after it), never scored; a long
  criterion's windows read the same neighbouring lines, not each other. ``max_length``
  bounds the criterion's own wordpieces: an example has at most ``max_length +
  context_length``.
* Criteria longer than ``max_length`` wordpieces are split into windows at word boundaries
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
import itertools
import re

import numpy as np

from jointre_jax.data.accounting import Accounting
from jointre_jax.data.brat import Document, Entity
from jointre_jax.data.schema import RelationCandidate, Schema
from jointre_jax.labels import BioScheme, EntityScheme, fragment_link_label, merge_fragments

_LINE_BREAK = re.compile(r"\r\n|\n|\r")
_CUT_AFTER = frozenset(".;,:!?)")


@dataclasses.dataclass(frozen=True)
class EntitySpan:
    """A kept entity inside an example.

    ``start``/``end``: word indices into the example's ``words``, end exclusive.
    ``char_start``/``char_end``: offsets into the example's ``text`` (whole words).
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

    ``input_ids`` int32 [n]: [CLS] criterion [SEP], or with ``context_length`` [CLS] left
    context, criterion [SEP] right context (:meth:`Encoder._context`: wordpieces of the
    neighbouring criteria of the document, each line's followed by [SEP]), which the encoder
    reads and no word, entity or score ever points into; ``offsets`` int32 [n, 2] character
    offsets of each wordpiece into ``text`` ((0, 0) for special and context tokens);
    ``words`` int32 [w, 2]
    character offsets of each word into ``text``; ``word_starts`` int32 [w] index into
    ``input_ids`` of each word's first wordpiece; ``entities`` sorted by (start, end);
    ``relations``: (head entity index, tail entity index, label id >= 1) into ``entities``.
    ``text`` is the whole criterion line; ``line_start`` its character offset in the document;
    ``line`` its 1-based line number; ``right_context``: wordpieces of context after the
    criterion's [SEP].
    """

    doc_id: str
    line: int
    line_start: int
    window: int
    text: str
    input_ids: np.ndarray
    offsets: np.ndarray
    words: np.ndarray
    word_starts: np.ndarray
    entities: tuple[EntitySpan, ...]
    relations: tuple[tuple[int, int, int], ...]
    right_context: int = 0

    @property
    def length(self) -> int:
        """Wordpieces, [CLS] and [SEP] included."""
        return len(self.input_ids)

    @property
    def sep(self) -> int:
        """Index into ``input_ids`` of the [SEP] that closes the criterion."""
        return self.length - 1 - self.right_context

    @property
    def num_words(self) -> int:
        return len(self.word_starts)


def split_lines(text: str) -> list[tuple[int, int, int]]:
    """(1-based line number, start, end) of each line of ``text``; end excludes the break."""
    lines, start, number = [], 0, 1
    for match in _LINE_BREAK.finditer(text):
        lines.append((number, start, match.start()))
        start, number = match.end(), number + 1
    lines.append((number, start, len(text)))
    return lines


def word_pieces(word_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first wordpiece, one past the last wordpiece) of each word, int64 [w] each, from the
    word index of each wordpiece (int [n], a tokenizer's ``word_ids`` without specials)."""
    first = np.flatnonzero(np.r_[True, word_of[1:] != word_of[:-1]])
    return first, np.r_[first[1:], len(word_of)]


def choose_windows(num_tokens: int, budget: int, spans, token_texts, cuts=None):
    """Cuts ``num_tokens`` wordpieces into windows of at most ``budget`` tokens.

    A cut at i (between tokens i-1 and i) is allowed when ``cuts[i]`` (default: everywhere;
    the encoder allows word starts only) and no span in ``spans`` (token [start, end))
    contains both; among allowed cuts in the second half of a window, the last one after
    punctuation wins, else the last allowed one. Returns [(start, end)] covering 0..num_tokens.
    If no cut is allowed (a word or span longer than the budget) it cuts at the budget.
    """
    blocked = np.zeros(num_tokens + 1, dtype=bool)
    if cuts is not None:
        blocked |= ~np.asarray(cuts, bool)
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
    """Turns documents into :class:`Example` lists with a fast (offset-mapping) tokenizer.

    ``scheme`` (:mod:`jointre_jax.labels`) says which gold entities an example can hold; the
    default is BIO with the "most_relations" overlap policy.
    """

    def __init__(
        self,
        schema: Schema,
        tokenizer,
        max_length: int = 128,
        scheme: EntityScheme | None = None,
        lenient: bool = True,
        context_length: int = 0,
    ):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("a fast tokenizer (with offset mapping) is required")
        if max_length < 3:
            raise ValueError("max_length must leave room for [CLS] x [SEP]")
        if context_length < 0:
            raise ValueError(f"context_length must be >= 0, got {context_length}")
        self.schema = schema
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.scheme = scheme if scheme is not None else BioScheme(len(schema.entity_types))
        self.lenient = lenient
        self.context_length = context_length

    def tokenize(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per text: wordpiece ids int32 [n], character offsets int32 [n, 2] and word index
        int32 [n] of each wordpiece (no specials)."""
        if not texts:
            return []
        enc = self.tokenizer(
            texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        out = []
        for k, (ids, offs) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], strict=True)):
            words = np.asarray(enc.word_ids(k), np.int32)  # no specials: every piece has one
            out.append(
                (np.asarray(ids, np.int32), np.asarray(offs, np.int32).reshape(-1, 2), words)
            )
        return out

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
                elif self.scheme.fragments:
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
        window_links: list[list[tuple[int, int]]] = []  # fragment links of each example
        for k, (number, line_start, line_end) in enumerate(lines):
            ids, offsets, word_of = tokenized[k]
            text = doc.text[line_start:line_end]
            first_piece, piece_end = word_pieces(word_of)
            last_piece = piece_end - 1
            words = np.stack([offsets[first_piece, 0], offsets[last_piece, 1]], -1)
            starts = {int(a): w for w, (a, _) in enumerate(words)}
            ends = {int(b): w + 1 for w, (_, b) in enumerate(words)}
            aligned = []  # (entity, word start, word end, char start, char end)
            split = []  # (entity, [(word start, word end, char start, char end)] of fragments)
            for entity, a, b in per_line.get(k, []):
                pieces = [(a, b)]
                if self.scheme.fragments and entity.text != doc.text[a:b]:
                    pieces = list(entity.fragments)  # discontinuous: its fragments
                words_of = []
                for a, b in pieces:
                    a, b = a - line_start, b - line_start
                    if a in starts and b in ends and starts[a] < ends[b]:
                        words_of.append((starts[a], ends[b], a, b))
                if len(words_of) < len(pieces):
                    dropped[entity.id] = "inside_word"
                elif len(pieces) == 1:
                    aligned.append((entity, *words_of[0]))
                else:
                    split.append((entity, words_of))
            kept, fragments = self._select(aligned, split, relation_weight, dropped)
            token_texts = [text[a:b] for a, b in offsets]
            word_cuts = np.zeros(len(ids) + 1, bool)
            word_cuts[first_piece] = True
            word_cuts[len(ids)] = True
            extents = [(s, e) for _, s, e, _, _ in kept]
            extents += [(pieces[0][0], pieces[-1][1]) for _, pieces in fragments]
            windows = choose_windows(
                len(ids),
                self.max_length - 2,
                [(first_piece[s], last_piece[e - 1] + 1) for s, e in extents],
                token_texts,
                word_cuts,
            )
            if len(windows) > 1:
                acc.windowed_criteria += 1
            left, right = self._context(tokenized, k)
            for w, (w_start, w_end) in enumerate(windows):
                in_window = np.flatnonzero((first_piece >= w_start) & (first_piece < w_end))
                if not len(in_window):
                    continue
                w_first, w_last = int(in_window[0]), int(in_window[-1]) + 1
                rows = []  # (start, end, label, char start, char end, entity id), in window
                here = {}  # entity id -> its row (a discontinuous one: its first fragment's)
                for entity, s, e, a, b in kept:
                    if s >= w_first and e <= w_last:
                        here[entity.id] = len(rows)
                        label = self.schema.entity_type_id(entity.type)
                        rows.append((s, e, label, a, b, entity.id))
                    elif s < w_last and e > w_first:
                        dropped[entity.id] = "window_too_short"
                inside = []
                for entity, pieces in fragments:
                    first, last = pieces[0][0], pieces[-1][1]
                    if first >= w_first and last <= w_last:
                        inside.append((entity, pieces))
                    elif first < w_last and last > w_first:
                        dropped[entity.id] = "window_too_short"
                pieces, links, firsts = self._fragment_spans(inside)
                here.update({ann_id: len(rows) + n for ann_id, n in firsts.items()})
                links = [(len(rows) + h, len(rows) + t) for h, t in links]
                rows += pieces
                order = sorted(range(len(rows)), key=lambda i: rows[i][:2])  # (start, end)
                position = {old: new for new, old in enumerate(order)}
                placed.update({ann_id: (k, w, position[n]) for ann_id, n in here.items()})
                window_links.append(sorted((position[h], position[t]) for h, t in links))
                spans = [
                    EntitySpan(s - w_first, e - w_first, label, a, b, ann_id)
                    for s, e, label, a, b, ann_id in (rows[i] for i in order)
                ]
                examples.append(
                    Example(
                        doc.doc_id,
                        number,
                        line_start,
                        w,
                        text,
                        self._input_ids(ids[w_start:w_end], left, right),
                        np.concatenate(
                            [
                                np.zeros((1 + len(left), 2)),
                                offsets[w_start:w_end],
                                np.zeros((1 + len(right), 2)),
                            ]
                        ).astype(np.int32),
                        words[w_first:w_last].astype(np.int32),
                        (first_piece[w_first:w_last] - w_start + 1 + len(left)).astype(np.int32),
                        tuple(spans),
                        (),
                        len(right),
                    )
                )
        acc.entities.kept += len(placed)
        for reason in dropped.values():
            acc.entities.drop(reason)
        acc.examples += len(examples)
        reasons = {e.id: e.problem for e in doc.entities.values() if e.problem}
        reasons.update(dropped)
        self._attach_relations(relations, placed, reasons, examples, lines, acc)
        if self.scheme.fragments:
            link = fragment_link_label(self.schema.num_relation_labels)
            for i, links in enumerate(window_links):
                if links:
                    rels = tuple(
                        sorted(examples[i].relations + tuple((h, t, link) for h, t in links))
                    )
                    examples[i] = dataclasses.replace(examples[i], relations=rels)
        return examples

    def _select(self, aligned, split, relation_weight, dropped):
        """The entities of one line that its examples hold: (kept, fragments).

        ``aligned``: contiguous entities (entity, word start, word end, char start, char end);
        ``split``: discontinuous ones (entity, [(word start, word end, char start, char end)]
        of its fragments), with ``fragments`` only. Fragments of one type on one span are one
        span of the scheme, shared. The scheme's ``select`` sees every span; a discontinuous
        entity whose fragment is left out goes with it. A discontinuous entity is kept only
        when :func:`merge_fragments` reads it back exactly beside the others kept
        ("fragments_ambiguous" otherwise). Returns the kept contiguous entities sorted by
        (start, end), and the kept discontinuous ones in line order.
        """
        items: dict[tuple[int, int, str], list] = {}  # (start, end, type): [weight, owners]
        for entity, pieces in split:
            for start, end, _, _ in pieces:
                item = items.setdefault((start, end, entity.type), [0, []])
                item[0] += 1 + relation_weight.get(entity.id, 0)
                item[1].append(entity.id)
        keys = list(items)
        left_out = self.scheme.select(
            [(s, e) for _, s, e, _, _ in aligned] + [(s, e) for s, e, _ in keys],
            [1 + relation_weight.get(ent.id, 0) for ent, *_ in aligned]
            + [items[key][0] for key in keys],
        )
        for i, reason in left_out.items():
            if i < len(aligned):
                dropped[aligned[i][0].id] = reason
            else:
                for owner in items[keys[i - len(aligned)]][1]:
                    dropped.setdefault(owner, reason)
        kept = sorted(
            (item for i, item in enumerate(aligned) if i not in left_out),
            key=lambda item: (item[1], item[2]),
        )
        fragments = []
        for entity, pieces in split:
            if entity.id in dropped:
                continue
            if self._read_back(fragments + [(entity, pieces)]):
                fragments.append((entity, pieces))
            else:
                dropped[entity.id] = "fragments_ambiguous"
        return kept, fragments

    def _fragment_spans(self, fragments):
        """The scheme's spans of discontinuous entities: (spans, links, firsts).

        ``spans``: [(word start, word end, label, char start, char end, entity id)], one per
        distinct fragment span and type (label ``num_types + type``; the id of the first entity
        with it); ``links``: [(fragment, next fragment)] into ``spans``, sorted; ``firsts``:
        {entity id: index of its first fragment}.
        """
        num_types = self.scheme.num_types
        index: dict[tuple[int, int, int], int] = {}
        spans, links, firsts = [], set(), {}
        for entity, pieces in fragments:
            label = num_types + self.schema.entity_type_id(entity.type)
            idx = []
            for s, e, a, b in pieces:
                if (s, e, label) not in index:
                    index[(s, e, label)] = len(spans)
                    spans.append((s, e, label, a, b, entity.id))
                idx.append(index[(s, e, label)])
            firsts[entity.id] = idx[0]
            links.update(itertools.pairwise(idx))
        return spans, sorted(links), firsts

    def _read_back(self, fragments) -> bool:
        """Whether :func:`merge_fragments` gives back exactly these discontinuous entities
        from their fragments and links, each first fragment beginning only its own."""
        num_types = self.scheme.num_types
        spans, links, firsts = self._fragment_spans(fragments)
        want = {
            (tuple((s, e) for s, e, _, _ in pieces), self.schema.entity_type_id(entity.type))
            for entity, pieces in fragments
        }
        got, _, _ = merge_fragments(
            [(s, e) for s, e, *_ in spans],
            [label for _, _, label, *_ in spans],
            [(h, t, 1) for h, t in links],
            num_types,
            1,
        )
        return set(got) == want and len(set(firsts.values())) == len(fragments)

    def _context(self, tokenized, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Wordpieces of the criteria around line ``k`` that its examples read (see
        :class:`Example`): (left, right), int32, each line's pieces followed by [SEP]. Left:
        the lines before ``k``, at most ``context_length // 2`` wordpieces; right: the lines
        after it, in the room left (``context_length - len(left)``)."""
        left = self._neighbours(tokenized, range(k - 1, -1, -1), self.context_length // 2, True)
        room = self.context_length - len(left)
        return left, self._neighbours(tokenized, range(k + 1, len(tokenized)), room, False)

    def _neighbours(self, tokenized, order, room: int, before: bool) -> np.ndarray:
        """The pieces of the lines ``order`` (nearest first), each closed by [SEP], in at most
        ``room`` wordpieces, in text order, int32. The farthest line taken is cut to its whole
        words nearest the criterion: its last words ``before`` it, else its first words."""
        sep = self.tokenizer.sep_token_id
        parts = []
        for j in order:
            ids, _, word_of = tokenized[j]
            if len(ids) + 1 > room:
                starts, ends = word_pieces(word_of)
                if before:  # a cut at a word start, leaving room for [SEP]
                    cuts = starts[len(ids) - starts <= room - 1]
                    ids = ids[cuts[0] :] if len(cuts) else ids[:0]
                else:  # a cut at a word end
                    cuts = ends[ends <= room - 1]
                    ids = ids[: cuts[-1]] if len(cuts) else ids[:0]
                if not len(ids):
                    break
            parts.append(np.r_[ids, sep])
            room -= len(ids) + 1
            if room < 2:
                break
        if before:
            parts.reverse()
        return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)

    def _input_ids(self, ids: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """[CLS] left ids [SEP] right: the criterion's wordpieces and its context."""
        specials = self.tokenizer
        return np.concatenate(
            [[specials.cls_token_id], left, ids, [specials.sep_token_id], right]
        ).astype(np.int32)

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
