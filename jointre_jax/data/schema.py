"""The label schema (entity and relation types, BIO tags) and what a document offers to it.

:func:`Schema.collect` turns a :class:`~jointre_jax.data.brat.Document` into the candidate
entities and binary relations of the kept types, counting everything else: types left out
(``excluded``), annotations the reader flagged (``dropped``), relations whose arguments are
unknown or of a type left out (``dropped``). ``*`` groups (OR) become binary relations here.
"""

from __future__ import annotations

import dataclasses

from jointre_jax.data.accounting import Accounting
from jointre_jax.data.brat import BratFormatError, Document, Entity

GROUP_EXPANSIONS = ("chain", "all_pairs")


def _parse_aliases(pairs) -> dict[str, str]:
    aliases = {}
    for pair in pairs:
        raw, sep, kept = str(pair).partition(":")
        if not sep or not raw or not kept:
            raise ValueError(f"alias {pair!r} is not 'raw_name:kept_name'")
        aliases[raw] = kept
    return aliases


@dataclasses.dataclass(frozen=True)
class RelationCandidate:
    """A directed binary relation between two kept-type entities, before token alignment."""

    head: str  # entity id (Arg1)
    tail: str  # entity id (Arg2)
    label: int  # 1-based relation label id (0 is "no relation")
    line: int  # .ann line it comes from
    source: str  # "R" or "*"


@dataclasses.dataclass(frozen=True)
class Schema:
    """Entity types, relation types and how raw BRAT names map onto them.

    Entity type ids are 0-based indices into ``entity_types`` (the NER tags or span classes
    built on them live in :mod:`jointre_jax.labels`). Relation label ids: 0 = "none",
    ``1 + r`` = relation_labels[1 + r].
    """

    entity_types: tuple[str, ...]
    relation_types: tuple[str, ...]
    group_relations: tuple[str, ...] = ("OR",)
    group_expansion: str = "chain"
    entity_aliases: tuple[tuple[str, str], ...] = ()
    relation_aliases: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if len(set(self.entity_types)) != len(self.entity_types) or not self.entity_types:
            raise ValueError(f"entity types must be non-empty and unique: {self.entity_types}")
        labels = self.relation_types + self.group_relations
        if len(set(labels)) != len(labels):
            raise ValueError(f"relation and group types must be unique: {labels}")
        if self.group_expansion not in GROUP_EXPANSIONS:
            raise ValueError(f"group_expansion {self.group_expansion!r} not in {GROUP_EXPANSIONS}")

    @classmethod
    def from_config(cls, data_config) -> Schema:
        """Builds the schema from ``config.data`` (see configs/default.py)."""
        return cls(
            entity_types=tuple(data_config.entity_types),
            relation_types=tuple(data_config.relation_types),
            group_relations=tuple(data_config.group_relations),
            group_expansion=str(data_config.group_expansion),
            entity_aliases=tuple(_parse_aliases(data_config.entity_aliases).items()),
            relation_aliases=tuple(_parse_aliases(data_config.relation_aliases).items()),
        )

    # ----------------------------------------------------------------- vocabularies
    @property
    def relation_labels(self) -> tuple[str, ...]:
        """["none", R-line relation types..., group relation types...]."""
        return ("none",) + self.relation_types + self.group_relations

    @property
    def num_relation_labels(self) -> int:
        return len(self.relation_labels)

    def entity_type_id(self, raw_type: str) -> int | None:
        """0-based index of a (raw, alias-mapped) entity type, None when left out."""
        name = dict(self.entity_aliases).get(raw_type, raw_type)
        return self.entity_types.index(name) if name in self.entity_types else None

    def relation_label(self, raw_type: str, group: bool) -> int | None:
        """1-based relation label id, None when left out (R-line OR is not a group OR)."""
        name = dict(self.relation_aliases).get(raw_type, raw_type)
        allowed = self.group_relations if group else self.relation_types
        return self.relation_labels.index(name) if name in allowed else None

    # ---------------------------------------------------------------- collection
    def collect(
        self, doc: Document, acc: Accounting, lenient: bool = True
    ) -> tuple[list[Entity], list[RelationCandidate]]:
        """Candidate entities and relations of the kept types in ``doc``.

        Counts into ``acc``: raw entities/relations of kept types; drops for annotations the
        reader flagged or whose arguments are missing / of types left out; excluded types.
        Returns (entities without problems, relation candidates), both in file order.
        """
        acc.ignored_lines.update(doc.ignored)
        acc.skipped.update(doc.skipped)
        acc.repaired.update(doc.repaired)
        acc.messages.extend(doc.messages)
        entities = []
        for entity in doc.entities.values():
            if self.entity_type_id(entity.type) is None:
                acc.excluded_entities[entity.type] += 1
                continue
            acc.entities.raw += 1
            if entity.problem is not None:
                acc.entities.drop(entity.problem)
            else:
                entities.append(entity)

        relations: list[RelationCandidate] = []

        def add(head: str, tail: str, label: int, line: int, source: str) -> None:
            acc.relations.raw += 1
            for arg in (head, tail):
                if arg not in doc.entities:
                    if not lenient:
                        raise BratFormatError(doc.ann_path, line, f"unknown annotation id {arg}")
                    acc.relations.drop("unknown_argument")
                    acc.messages.append(f"{doc.ann_path}:{line}: unknown annotation id {arg}")
                    return
            for arg in (head, tail):
                if self.entity_type_id(doc.entities[arg].type) is None:
                    acc.relations.drop("argument_type_left_out")
                    return
            relations.append(RelationCandidate(head, tail, label, line, source))

        for rel in doc.relations:
            label = self.relation_label(rel.type, group=False)
            if label is None:
                acc.excluded_relations[f"R:{rel.type}"] += 1
            else:
                add(rel.arg1, rel.arg2, label, rel.line, "R")

        for group in doc.groups:
            label = self.relation_label(group.type, group=True)
            if label is None:
                acc.excluded_relations[f"*:{group.type}"] += 1
                continue
            for head, tail in self.expand_group(doc, group.members):
                add(head, tail, label, group.line, "*")
        relations.sort(key=lambda r: r.line)
        return entities, relations

    def expand_group(self, doc: Document, members: tuple[str, ...]) -> list[tuple[str, str]]:
        """Directed pairs of a group's members in text order (unknown ids sort last)."""

        def position(ann_id):
            entity = doc.entities.get(ann_id)
            return (0, entity.start, entity.end, ann_id) if entity else (1, 0, 0, ann_id)

        ordered = sorted(dict.fromkeys(members), key=position)
        if self.group_expansion == "chain":
            return list(zip(ordered[:-1], ordered[1:], strict=True))
        return [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1 :]]
