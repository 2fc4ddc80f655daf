"""The grouped view of a criterion: each main entity with its attributes attached.

Chia's relations mostly attach an attribute to a main entity: ``Has_value``,
``Has_temporal``, ``Has_qualifier``, ``Has_negation``, ``Has_mood``, ``Has_multiplier``,
``Has_index``, ``Has_scope``, ``Has_context``, ``Has_reference_point``... (head: the main
entity, tail: the attribute). The grouped view turns the spans and relations of one criterion
into one record per main entity, so "HbA1c > 7% within the last 3 months" becomes::

    {"entity": {"type": "Measurement", "text": "HbA1c", ...},
     "values": [{"type": "Value", "text": "> 7%", ...}],
     "temporal": [{"type": "Temporal", "text": "within the last 3 months", ...}]}

A record's keys come from the relation type (``Has_temporal`` -> ``temporal``, pluralised
where a list is natural: ``values``, ``qualifiers``, ...); ``negated`` is true when a
``Has_negation`` attaches a negation. Relations between main entities (``OR``, ``AND``,
``Subsumes``, ...) become links: ``{"or": ["T3"]}``. An entity that is only ever an attribute
has no record of its own; an entity that is neither head nor tail of anything gets a record
with no attributes.
"""

from __future__ import annotations

import dataclasses

from jointre_jax.extraction import Criterion

# Relation type -> record key for attribute relations; other relation types are links.
ATTRIBUTE_KEYS = {
    "Has_value": "values",
    "Has_temporal": "temporal",
    "Has_qualifier": "qualifiers",
    "Has_negation": "negation",
    "Has_mood": "mood",
    "Has_multiplier": "multipliers",
    "Has_index": "index",
    "Has_scope": "scope",
    "Has_context": "context",
    "Has_reference_point": "reference_points",
}


def _key(relation_type: str) -> str:
    if relation_type in ATTRIBUTE_KEYS:
        return ATTRIBUTE_KEYS[relation_type]
    name = relation_type.removeprefix("Has_").lower()
    return name


def group_criterion(criterion: Criterion) -> dict:
    """The grouped view of one criterion.

    Returns a dict with ``doc_id``, ``nct_id``, ``section``, ``line``, ``start``, ``end``,
    ``text`` and ``records``: one dict per main
    entity, ``{"entity": {...}, <attribute key>: [entities], "negated": bool, "links":
    {relation key: [entity ids]}}``, in text order.
    """
    by_id = {e.id: dataclasses.asdict(e) for e in criterion.entities}
    attribute_ids = set()
    attributes: dict[str, dict[str, list]] = {e.id: {} for e in criterion.entities}
    links: dict[str, dict[str, list]] = {e.id: {} for e in criterion.entities}
    for relation in criterion.relations:
        if relation.head not in by_id or relation.tail not in by_id:
            continue
        key = _key(relation.type)
        if relation.type.startswith("Has_"):
            attributes[relation.head].setdefault(key, []).append(
                {**by_id[relation.tail], "score": relation.score}
            )
            attribute_ids.add(relation.tail)
        else:
            links[relation.head].setdefault(key, []).append(relation.tail)
    records = []
    for entity in criterion.entities:
        is_head = bool(attributes[entity.id] or links[entity.id])
        if entity.id in attribute_ids and not is_head:
            continue
        record = {"entity": by_id[entity.id], **attributes[entity.id]}
        record["negated"] = "negation" in attributes[entity.id]
        if links[entity.id]:
            record["links"] = links[entity.id]
        records.append(record)
    return {
        "doc_id": criterion.doc_id,
        "nct_id": criterion.nct_id,
        "section": criterion.section,
        "line": criterion.line,
        "start": criterion.start,
        "end": criterion.end,
        "text": criterion.text,
        "records": records,
    }
