"""Scoring against the corpus gold: every annotation of the kept types, nested, discontinuous
and cross-line entities included, on a hand-made document with known P/R/F."""

import numpy as np
import pytest

from configs import default
from jointre_jax.data.brat import read_document
from jointre_jax.data.encode import Example
from jointre_jax.data.schema import Schema
from jointre_jax.evaluation import CorpusGold, CorpusScorer
from jointre_jax.predictor import PredictedEntity, Prediction
from tests.conftest import write_brat

SCHEMA = Schema.from_config(default.get_config().data)
TEXT = "severe renal impairment\nheart failure or stroke\n"
ANN = "\n".join(
    [
        "T1\tCondition 0 23\tsevere renal impairment",
        "T2\tQualifier 0 6\tsevere",  # nested in T1
        "T3\tCondition 7 23\trenal impairment",  # nested in T1
        "T4\tCondition 24 29;41 47\theart stroke",  # discontinuous
        "T5\tCondition 13 29\timpairment heart",  # crosses the line break
        "T6\tNon-query-able 38 40\tor",  # a type left out: not gold
        "T7\tCondition 7 23\trenal impairment",  # a duplicate of T3: one gold entity
        "T8\tCondition 24 29;30 37\theart failure",  # fragments joined by their space: merged
        "R1\tHas_qualifier Arg1:T3 Arg2:T2",
        "R2\tHas_context Arg1:T3 Arg2:T6",  # argument of a type left out: not gold
        "*\tOR T5 T3",  # expanded in text order: T3 -> T5
    ]
)


def example(line_start, text):
    empty = np.zeros((0, 2), np.int32)
    return Example("doc", 1, line_start, 0, text, np.zeros(2, np.int32), empty, empty,
                   np.zeros(0, np.int32), (), ())  # fmt: skip


def entity(kind, start, end):
    return PredictedEntity(0, 1, SCHEMA.entity_types.index(kind), start, end)


def test_corpus_gold_known_counts_and_scores(tmp_path):
    doc = read_document(write_brat(tmp_path, "doc", TEXT, ANN + "\n"), lenient=True)
    gold = CorpusGold(SCHEMA)
    gold.add_document(doc)
    assert gold.to_dict() == {"documents": 1, "entities": 6, "relations": 2}
    assert ("doc", "Condition", ((24, 37),)) in gold.entities  # T8 merged
    assert ("doc", "Condition", ((24, 29), (41, 47))) in gold.entities  # T4 as written

    scorer = CorpusScorer(gold)
    first = Prediction(
        [
            entity("Condition", 0, 23),  # right
            entity("Qualifier", 0, 6),  # right (nested)
            entity("Condition", 7, 23),  # right (nested)
            entity("Measurement", 7, 12),  # wrong
        ],
        [(2, 1, SCHEMA.relation_labels.index("Has_qualifier"), 0.9)],  # right
        None,
    )
    second = Prediction(
        [entity("Condition", 0, 13), entity("Condition", 17, 23)],  # "heart failure": right
        [(0, 1, SCHEMA.relation_labels.index("OR"), 0.8)],  # wrong pair
        None,
    )
    scorer.add(example(0, TEXT[0:23]), first)
    scorer.add(example(24, TEXT[24:47]), second)
    results = scorer.results()
    ner = results["ner"]
    # tp: T1, T2, T3, T8 = 4; fp: Measurement, "stroke" = 2; fn: T4, T5 = 2.
    assert (ner["tp"], ner["fp"], ner["fn"]) == (4, 2, 2)
    assert ner["precision"] == pytest.approx(4 / 6) and ner["recall"] == pytest.approx(4 / 6)
    re = results["re_e2e"]
    assert (re["tp"], re["fp"], re["fn"]) == (1, 1, 1)  # the OR to the cross-line T5 is missed
    assert re["f1"] == pytest.approx(0.5)
    assert results["re_e2e_boundaries"]["tp"] == 1
    assert results["gold"] == {"documents": 1, "entities": 6, "relations": 2}


def test_predicted_fragments_read_back_and_match_a_discontinuous_gold_entity(tmp_path):
    from jointre_jax.labels import SpanScheme
    from jointre_jax.predictor import read_fragments

    doc = read_document(write_brat(tmp_path, "doc", TEXT, ANN + "\n"), lenient=True)
    gold = CorpusGold(SCHEMA)
    gold.add_document(doc)
    line = TEXT[24:47]  # "heart failure or stroke": four words
    words = np.array([[0, 5], [6, 13], [14, 16], [17, 23]], np.int32)
    ex = Example("doc", 2, 24, 0, line, np.zeros(2, np.int32), np.zeros((0, 2), np.int32), words,
                 np.arange(4, dtype=np.int32), (), ())  # fmt: skip
    num_types = len(SCHEMA.entity_types)
    condition = SCHEMA.entity_types.index("Condition")
    scheme = SpanScheme(num_types, 4, fragments=True)
    link = SCHEMA.num_relation_labels
    fragment = num_types + condition
    raw = Prediction(
        [
            PredictedEntity(0, 1, fragment, 0, 5, 0.9),  # heart (fragment)
            PredictedEntity(0, 2, condition, 0, 13, 0.8),  # heart failure
            PredictedEntity(3, 4, fragment, 17, 23, 0.7),  # stroke (fragment)
            PredictedEntity(2, 3, fragment, 14, 16, 0.6),  # "or": a fragment on no chain
        ],
        [(0, 2, link, 0.9), (0, 1, SCHEMA.relation_labels.index("AND"), 0.5)],
        None,
    )
    read = read_fragments(raw, scheme, link)
    assert [(e.word_spans, e.label, e.char_spans) for e in read.entities] == [
        (((0, 1), (3, 4)), condition, ((0, 5), (17, 23))),  # heart ... stroke
        (((0, 2),), condition, ((0, 13),)),
    ]
    assert read.entities[0].score == pytest.approx(0.7)  # its least probable fragment
    assert read.relations == [(0, 1, SCHEMA.relation_labels.index("AND"), 0.5)]
    scorer = CorpusScorer(gold)
    scorer.add(ex, read)
    ner = scorer.results()["ner"]
    assert (ner["tp"], ner["fp"]) == (2, 0)  # T4 (discontinuous) and T8 (merged) match
