"""Counters that make every annotation visible: raw = kept + the sum of dropped, exactly."""

from __future__ import annotations

import collections
import dataclasses


@dataclasses.dataclass
class Tally:
    """Annotations of the kept types: how many the files hold, keep, and drop by reason."""

    raw: int = 0
    kept: int = 0
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count

    def balanced(self) -> bool:
        """True when raw == kept + sum(dropped)."""
        return self.raw == self.kept + sum(self.dropped.values())

    def merge(self, other: Tally) -> None:
        self.raw += other.raw
        self.kept += other.kept
        self.dropped.update(other.dropped)

    def to_dict(self) -> dict:
        return {
            "raw": self.raw,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items(), key=lambda kv: (-kv[1], kv[0]))),
        }


@dataclasses.dataclass
class Accounting:
    """What one split (or document) turned into, with everything that did not make it."""

    documents: int = 0
    # Non-blank lines: one criterion each.
    criteria: int = 0
    # Model inputs: one per criterion, more for criteria split into windows.
    examples: int = 0
    # Criteria longer than the maximum length, split into several examples.
    windowed_criteria: int = 0
    entities: Tally = dataclasses.field(default_factory=Tally)
    relations: Tally = dataclasses.field(default_factory=Tally)
    # Annotations of types the schema leaves out (annotator flags, noise relations), by type.
    # R-line relations are keyed "R:Type", group lines "*:Type".
    excluded_entities: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    excluded_relations: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # Recognised BRAT lines the model does not use (events, attributes, notes, ...).
    ignored_lines: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # Lines or files that could not be read (lenient mode), by reason.
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # Annotations kept after an exact, lossless repair, by repair.
    repaired: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # "path:line: message" of each problem skipped in lenient mode.
    messages: list[str] = dataclasses.field(default_factory=list)

    def merge(self, other: Accounting) -> None:
        """Adds ``other`` into this accounting."""
        for field in ("documents", "criteria", "examples", "windowed_criteria"):
            setattr(self, field, getattr(self, field) + getattr(other, field))
        self.entities.merge(other.entities)
        self.relations.merge(other.relations)
        for field in ("excluded_entities", "excluded_relations", "ignored_lines", "skipped"):
            getattr(self, field).update(getattr(other, field))
        self.repaired.update(other.repaired)
        self.messages.extend(other.messages)

    def check(self) -> None:
        """Raises AssertionError if an entity or relation is unaccounted for."""
        for name in ("entities", "relations"):
            tally = getattr(self, name)
            if not tally.balanced():
                raise AssertionError(f"{name}: raw {tally.raw} != kept + dropped {tally.to_dict()}")

    def to_dict(self) -> dict:
        def counts(counter):
            return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))

        return {
            "documents": self.documents,
            "criteria": self.criteria,
            "examples": self.examples,
            "windowed_criteria": self.windowed_criteria,
            "entities": self.entities.to_dict(),
            "relations": self.relations.to_dict(),
            "excluded": {
                "entities": counts(self.excluded_entities),
                "relations": counts(self.excluded_relations),
            },
            "ignored_lines": counts(self.ignored_lines),
            "skipped": counts(self.skipped),
            "repaired": counts(self.repaired),
            "problems": list(self.messages),
        }
