"""Schema and encoder: whole words, kept/dropped accounting, BIO and span schemes, windows."""

import pytest

from configs import default
from jointre_jax.data.accounting import Accounting
from jointre_jax.data.batching import word_ends
from jointre_jax.data.brat import BratFormatError, read_document
from jointre_jax.data.encode import Encoder, choose_windows, split_lines
from jointre_jax.data.schema import Schema
from jointre_jax.labels import BioScheme, SpanScheme, select_non_overlapping
from tests.conftest import t_line, write_brat

SCHEMA = Schema.from_config(default.get_config().data)


def encode(tmp_path, tokenizer, text, ann_lines, crlf=False, **kwargs):
    path = write_brat(tmp_path, "doc", text, "\n".join(ann_lines) + "\n", crlf=crlf)
    lenient = kwargs.pop("lenient", True)
    doc = read_document(path, lenient=lenient)
    acc = Accounting()
    schema = kwargs.pop("schema", SCHEMA)
    if "overlap_policy" in kwargs:
        kwargs["scheme"] = BioScheme(len(schema.entity_types), kwargs.pop("overlap_policy"))
    encoder = Encoder(schema, tokenizer, lenient=lenient, **kwargs)
    examples = encoder.encode_document(doc, acc)
    acc.check()
    return examples, acc


def tags_of(example, schema=SCHEMA):
    """The example's BIO tag names, one per word."""
    scheme = BioScheme(len(schema.entity_types))
    names = scheme.tag_names(schema.entity_types)
    tags = scheme.tags([(e.start, e.end, e.label) for e in example.entities], example.num_words)
    return [names[t] for t in tags]


def test_bio_tags_anchors_and_relations(tmp_path, tiny_tokenizer):
    text = "Patients with type 2 diabetes\r\nHbA1c > 7 % within the last 3 months\r\n"
    examples, acc = encode(
        tmp_path,
        tiny_tokenizer,
        text,
        [
            t_line("T1", "Condition", text, "type 2 diabetes"),
            t_line("T2", "Measurement", text, "HbA1c"),
            t_line("T3", "Value", text, "> 7 %"),
            t_line("T4", "Temporal", text, "within the last 3 months"),
            "R1\tHas_value Arg1:T2 Arg2:T3",
            "R2\tHas_temporal Arg1:T2 Arg2:T4",
        ],
    )
    assert [ex.line for ex in examples] == [1, 2]
    first, second = examples
    assert tags_of(first) == ["O", "O", "B-Condition", "I-Condition", "I-Condition"]
    assert tags_of(second)[:4] == ["B-Measurement", "B-Value", "I-Value", "I-Value"]
    for ex in examples:
        for span in ex.entities:  # every kept entity has exactly its text, in whole words
            assert ex.words[span.start][0] == span.char_start
            assert ex.words[span.end - 1][1] == span.char_end
        for w, (a, b) in enumerate(ex.words):  # a word's first wordpiece starts it
            assert ex.offsets[ex.word_starts[w]][0] == a and ex.text[a:b].strip() == ex.text[a:b]
    has_value = SCHEMA.relation_labels.index("Has_value")
    has_temporal = SCHEMA.relation_labels.index("Has_temporal")
    assert second.relations == ((0, 1, has_value), (0, 2, has_temporal))
    within = second.entities[2]  # "within the last 3 months": words 4..8
    assert (within.start, within.end) == (4, 9)
    assert BioScheme(1).anchor_of(within.start, within.end) == 4
    assert BioScheme(1, anchor="last").anchor_of(within.start, within.end) == 8
    assert acc.entities.to_dict() == {"raw": 4, "kept": 4, "dropped": {}}
    assert acc.relations.to_dict() == {"raw": 2, "kept": 2, "dropped": {}}
    assert (acc.documents, acc.criteria, acc.examples) == (1, 2, 2)


def test_or_groups_chain_in_text_order_and_exclusions(tmp_path, tiny_tokenizer):
    text = "breast cancer or lung cancer or stroke\n"
    lines = [
        t_line("T1", "Condition", text, "stroke"),
        t_line("T2", "Condition", text, "breast cancer"),
        t_line("T3", "Condition", text, "lung cancer"),
        t_line("T4", "Non-query-able", text, "or"),
        "*\tOR T1 T2 T3",
        "*\tNOT T2 T3",
        "R1\tOR Arg1:T2 Arg2:T3",
        "R2\tmulti Arg1:T2 Arg2:T3",
        "R3\tHas_context Arg1:T2 Arg2:T4",
    ]
    (example,), acc = encode(tmp_path, tiny_tokenizer, text, lines)
    or_label = SCHEMA.relation_labels.index("OR")
    by_id = [span.ann_id for span in example.entities]
    pairs = {(by_id[h], by_id[t]) for h, t, label in example.relations if label == or_label}
    assert pairs == {("T2", "T3"), ("T3", "T1")}  # consecutive members in text order
    assert acc.excluded_entities == {"Non-query-able": 1}
    assert acc.excluded_relations == {"*:NOT": 1, "R:OR": 1, "R:multi": 1}
    assert acc.relations.to_dict() == {
        "raw": 3,
        "kept": 2,
        "dropped": {"argument_type_left_out": 1},
    }
    all_pairs = Schema(SCHEMA.entity_types, SCHEMA.relation_types, group_expansion="all_pairs")
    (example,), acc = encode(tmp_path, tiny_tokenizer, text, lines[:5], schema=all_pairs)
    assert len(example.relations) == 3 and acc.relations.raw == 3


def test_aliases_map_before_filtering(tmp_path, tiny_tokenizer):
    config = default.get_config()
    config.data.entity_aliases = ("Illness:Condition",)
    config.data.relation_aliases = ("negated_by:Has_negation",)
    schema = Schema.from_config(config.data)
    text = "no stroke\n"
    lines = [
        t_line("T1", "Illness", text, "stroke"),
        t_line("T2", "Negation", text, "no"),
        "R1\tnegated_by Arg1:T1 Arg2:T2",
    ]
    (example,), acc = encode(tmp_path, tiny_tokenizer, text, lines, schema=schema)
    assert tags_of(example)[0:2] == ["B-Negation", "B-Condition"]
    assert acc.relations.kept == 1
    with pytest.raises(ValueError, match="raw_name:kept_name"):
        config.data.entity_aliases = ("Illness",)
        Schema.from_config(config.data)


def test_policies_for_what_bio_cannot_hold(tmp_path, tiny_tokenizer):
    text = "severe renal impairment and stroke\nbreast or lung cancer\nhba1c>7\n"
    start = text.index("breast")
    lines = [
        t_line("T1", "Condition", text, "severe renal impairment"),
        t_line("T2", "Qualifier", text, "severe"),  # nested: loses (fewer relations)
        t_line("T3", "Condition", text, "renal impairment"),  # nested
        "R1\tHas_qualifier Arg1:T3 Arg2:T2",  # ... unless relations outweigh the span
        # crosses a line break (BRAT writes the break in the mention as a space)
        t_line("T4", "Condition", text, "stroke\nbreast").replace(
            "stroke\nbreast", "stroke breast"
        ),
        f"T5\tCondition {start} {start + 6};{start + 15} {start + 21}\tbreast cancer",
        t_line("T6", "Measurement", text, "hba1c>"),
        t_line("T7", "Value", text, "c>7"),  # starts inside the word 'hba1c'
        "R2\tHas_value Arg1:T6 Arg2:T7",
        "R3\tAND Arg1:T1 Arg2:T1",
    ]
    examples, acc = encode(tmp_path, tiny_tokenizer, text, lines)
    kept = {span.ann_id for ex in examples for span in ex.entities}
    assert kept == {"T2", "T3", "T6"}  # T2+T3 (weight 2+2) beat T1 (weight 1 + 1 self-rel)
    assert acc.entities.dropped == {
        "overlap": 1,
        "crosses_line": 1,
        "discontinuous": 1,
        "inside_word": 1,
    }
    assert acc.relations.dropped == {"argument_inside_word": 1, "self_relation": 1}
    assert acc.relations.kept == 1

    examples, acc = encode(tmp_path, tiny_tokenizer, text, lines, overlap_policy="longest")
    assert {span.ann_id for span in examples[0].entities} == {"T1"}
    assert acc.relations.dropped["argument_overlap"] == 1


def test_merged_fragments_when_the_gap_is_the_joining_space(tmp_path, tiny_tokenizer):
    text = "heart failure\n"
    (example,), acc = encode(
        tmp_path, tiny_tokenizer, text, ["T1\tCondition 0 5;6 13\theart failure"]
    )
    assert tags_of(example)[0:2] == ["B-Condition", "I-Condition"]
    assert acc.repaired == {"merged_fragments": 1}


def test_duplicate_and_conflicting_relations(tmp_path, tiny_tokenizer):
    text = "lung cancer and stroke\n"
    lines = [
        t_line("T1", "Condition", text, "lung cancer"),
        t_line("T2", "Condition", text, "stroke"),
        "R1\tAND Arg1:T1 Arg2:T2",
        "R2\tAND Arg1:T1 Arg2:T2",
        "R3\tSubsumes Arg1:T1 Arg2:T2",
        "R4\tHas_value Arg1:T1 Arg2:T9",
    ]
    (example,), acc = encode(tmp_path, tiny_tokenizer, text, lines)
    assert example.relations == ((0, 1, SCHEMA.relation_labels.index("AND")),)
    assert acc.relations.dropped == {"duplicate": 1, "conflicting_label": 1, "unknown_argument": 1}
    with pytest.raises(BratFormatError, match=r"doc\.ann:6: unknown annotation id T9"):
        encode(tmp_path, tiny_tokenizer, text, lines, lenient=False)


def test_long_criteria_are_windowed_without_cutting_entities(tmp_path, tiny_tokenizer):
    clause = "no history of heart failure or stroke, "
    text = clause * 6 + "\n"
    lines, n = [], 0
    for i in range(6):
        base = i * len(clause)
        hf, st = base + clause.index("heart failure"), base + clause.index("stroke")
        lines += [
            f"T{n + 1}\tCondition {hf} {hf + 13}\theart failure",
            f"T{n + 2}\tCondition {st} {st + 6}\tstroke",
            f"R{i + 1}\tAND Arg1:T{n + 1} Arg2:T{n + 2}",
        ]
        n += 2
    lines.append("R99\tAND Arg1:T1 Arg2:T12")  # first and last clause: different windows
    examples, acc = encode(tmp_path, tiny_tokenizer, text, lines, max_length=20)
    assert len(examples) > 1 and acc.windowed_criteria == 1
    assert all(ex.length <= 20 for ex in examples)
    assert [ex.window for ex in examples] == list(range(len(examples)))
    assert acc.entities.to_dict() == {"raw": 12, "kept": 12, "dropped": {}}
    assert acc.relations.dropped == {"crosses_window": 1} and acc.relations.kept == 6
    for ex in examples:
        for span in ex.entities:
            assert ex.text[span.char_start : span.char_end] in ("heart failure", "stroke")


def test_span_scheme_keeps_nested_entities(tmp_path, tiny_tokenizer):
    text = "severe renal impairment and stroke\n"
    lines = [
        t_line("T1", "Condition", text, "severe renal impairment"),
        t_line("T2", "Qualifier", text, "severe"),
        t_line("T3", "Condition", text, "renal impairment"),
        t_line("T4", "Qualifier", text, "renal impairment"),  # same words as T3
        "R1\tHas_qualifier Arg1:T3 Arg2:T2",
        t_line("T5", "Condition", text, "severe renal impairment and stroke"),  # 5 words
    ]
    (example,), acc = encode(
        tmp_path, tiny_tokenizer, text, lines, scheme=SpanScheme(len(SCHEMA.entity_types), 4)
    )
    spans = [(e.ann_id, e.start, e.end) for e in example.entities]
    assert spans == [("T2", 0, 1), ("T1", 0, 3), ("T3", 1, 3)]  # sorted by (start, end)
    assert acc.entities.dropped == {"same_span": 1, "too_wide": 1}
    assert example.relations == ((2, 0, SCHEMA.relation_labels.index("Has_qualifier")),)


def test_whole_words_hold_hyphenated_values_and_long_words(tmp_path, tiny_tokenizer):
    # "anesthesiologists" is many wordpieces but one word; "I-II" is three words.
    text = "anesthesiologists score of I-II\n"
    lines = [
        t_line("T1", "Person", text, "anesthesiologists"),
        t_line("T2", "Value", text, "I-II"),
        t_line("T3", "Person", text, "anesthesio"),  # ends inside a word
    ]
    (example,), acc = encode(tmp_path, tiny_tokenizer, text, lines)
    assert example.length > 3 + 6  # the long word took several wordpieces
    words = [example.text[a:b] for a, b in example.words]
    assert words == ["anesthesiologists", "score", "of", "I", "-", "II"]
    assert [(e.start, e.end) for e in example.entities] == [(0, 1), (3, 6)]
    assert acc.entities.dropped == {"inside_word": 1}
    # Each word's last wordpiece (batch "word_end_index"): the pieces of a word, in order,
    # rebuild it, and the last word ends just before [SEP].
    ends = word_ends(example)
    assert ends[-1] == example.length - 2
    for (a, b), first, last in zip(example.words, example.word_starts, ends, strict=True):
        pieces = tiny_tokenizer.convert_ids_to_tokens(example.input_ids[first : last + 1])
        assert "".join(p.removeprefix("##") for p in pieces) == example.text[a:b].lower()


def test_select_non_overlapping_known_answers():
    spans = [(0, 10), (0, 3), (4, 10), (2, 6)]
    assert select_non_overlapping(spans, [1, 1, 1, 1], "most_relations") == [1, 2]
    assert select_non_overlapping(spans, [5, 1, 1, 1], "most_relations") == [0]
    assert select_non_overlapping(spans, [1, 1, 1, 1], "longest") == [0]
    assert select_non_overlapping(spans, [1, 1, 1, 1], "shortest") == [1, 2]
    assert select_non_overlapping([], [], "most_relations") == []


def test_choose_windows_prefers_punctuation_and_respects_spans():
    tokens = list("abcdefgh") + ["."] + list("ijklmno")  # 16 tokens
    windows = choose_windows(16, 10, [(7, 11)], tokens)
    assert windows == [(0, 7), (7, 16)]  # cut at 9 (after '.') would split span (7, 11)
    assert choose_windows(16, 10, [], tokens) == [(0, 9), (9, 16)]
    assert choose_windows(5, 10, [], tokens) == [(0, 5)]


def test_split_lines_handles_every_line_break():
    assert split_lines("a\r\nb\nc\rd") == [(1, 0, 1), (2, 3, 4), (3, 5, 6), (4, 7, 8)]


def test_discontinuous_entities_become_linked_fragments(tmp_path, tiny_tokenizer):
    from jointre_jax.evaluation import Scorer

    text = "heart or lung cancer and stroke\n"
    lines = [
        "T1\tCondition 0 5;14 20\theart cancer",  # heart ... cancer
        t_line("T2", "Condition", text, "lung cancer"),
        t_line("T3", "Condition", text, "stroke"),
        "R1\tAND Arg1:T1 Arg2:T3",
    ]
    num_types = len(SCHEMA.entity_types)
    condition = SCHEMA.entity_types.index("Condition")
    link = SCHEMA.num_relation_labels
    and_ = SCHEMA.relation_labels.index("AND")
    (plain,), acc = encode(tmp_path, tiny_tokenizer, text, lines, scheme=SpanScheme(num_types, 4))
    assert acc.entities.dropped == {"discontinuous": 1} and plain.relations == ()
    scheme = SpanScheme(num_types, 4, fragments=True)
    (example,), acc = encode(tmp_path, tiny_tokenizer, text, lines, scheme=scheme)
    assert acc.entities.dropped == {} and acc.entities.kept == 3 and acc.relations.kept == 1
    spans = [(e.start, e.end, e.label) for e in example.entities]
    fragment = num_types + condition
    assert spans == [(0, 1, fragment), (2, 4, condition), (3, 4, fragment), (5, 6, condition)]
    assert example.relations == ((0, 2, link), (0, 3, and_))  # the link; AND at heart
    entities, relations = Scorer(SCHEMA.entity_types, SCHEMA.relation_labels).gold(example)
    assert entities == [
        (((0, 1), (3, 4)), condition), (((2, 4),), condition), (((5, 6),), condition)
    ]  # fmt: skip
    assert relations == [(0, 2, and_)]


def test_fragments_that_would_read_back_wrong_are_dropped(tmp_path, tiny_tokenizer):
    text = "heart or lung or breast cancer\n"
    lines = [
        "T1\tCondition 0 5;9 13\theart lung",  # heart ... lung
        "T2\tCondition 9 13;24 30\tlung cancer",  # lung ... cancer: lung continues T1
        "T3\tCondition 17 23;24 30\tbreast cancer",  # contiguous slice, merged
    ]
    scheme = SpanScheme(len(SCHEMA.entity_types), 4, fragments=True)
    (example,), acc = encode(tmp_path, tiny_tokenizer, text, lines, scheme=scheme)
    assert acc.entities.dropped == {"fragments_ambiguous": 1}  # T2: heart-lung-cancer
    assert acc.repaired["merged_fragments"] == 1 and acc.entities.kept == 2


def test_context_reads_neighbouring_criteria_in_whole_words(tmp_path, tiny_tokenizer):
    text = "first line here\nanesthesiologists and stroke\nHbA1c > 7 %\nlast one\n"
    lines = [
        t_line("T1", "Person", text, "anesthesiologists"),
        t_line("T2", "Condition", text, "stroke"),
        t_line("T3", "Measurement", text, "HbA1c"),
        t_line("T4", "Value", text, "> 7 %"),
        "R1\tHas_value Arg1:T3 Arg2:T4",
    ]
    alone, acc_alone = encode(tmp_path, tiny_tokenizer, text, lines)
    budget = 12
    read, acc = encode(tmp_path, tiny_tokenizer, text, lines, context_length=budget)
    assert acc.to_dict() == acc_alone.to_dict()  # context changes nothing that is kept
    sep, cls = tiny_tokenizer.sep_token_id, tiny_tokenizer.cls_token_id
    # Each line's wordpieces followed by [SEP]: what the context is cut from.
    pieces = [tiny_tokenizer(t, add_special_tokens=False) for t in text.splitlines()]
    stream = [
        (p.input_ids + [sep], [w is None or w for w in p.word_ids()] + [True]) for p in pieces
    ]
    for k, (a, b) in enumerate(zip(alone, read, strict=True)):
        assert (a.entities, a.relations, a.text) == (b.entities, b.relations, b.text)
        assert a.words.tolist() == b.words.tolist()
        shift = b.word_starts[0] - a.word_starts[0]
        assert b.word_starts.tolist() == (a.word_starts + shift).tolist()
        assert word_ends(b).tolist() == (word_ends(a) + shift).tolist()
        # [CLS] left context, the criterion, [SEP], right context.
        assert b.input_ids[0] == cls and b.input_ids[b.sep] == sep
        assert b.input_ids[1 + shift : b.sep + 1].tolist() == a.input_ids[1:].tolist()
        left, right = b.input_ids[1 : 1 + shift].tolist(), b.input_ids[b.sep + 1 :].tolist()
        assert len(left) <= budget // 2 and len(left) + len(right) <= budget
        assert not b.offsets[: 1 + shift].any() and not b.offsets[b.sep :].any()
        before = [t for ids, _ in stream[:k] for t in ids]
        after = [t for ids, _ in stream[k + 1 :] for t in ids]
        assert before[len(before) - len(left) :] == left  # the nearest lines before
        # The nearest lines after; a line cut short is closed by [SEP] too.
        if right:
            assert after[: len(right) - 1] == right[:-1] and right[-1] == sep
        # Cut at word boundaries: the left context starts a word, the right ends one.
        starts = [s for _, word_of in stream[:k] for s in _word_starts(word_of)]
        assert not left or starts[len(starts) - len(left)]
        nexts = [s for _, word_of in stream[k + 1 :] for s in _word_starts(word_of)] + [True]
        assert not right or nexts[len(right) - 1]
    assert [len(ex.input_ids) - 1 - ex.sep for ex in read] == [ex.right_context for ex in read]
    assert read[0].word_starts[0] == 1 and read[-1].right_context == 0  # the ends of the doc
    assert max(ex.length - a.length for ex, a in zip(read, alone, strict=True)) == budget
    with pytest.raises(ValueError, match="context_length must be >= 0"):
        Encoder(SCHEMA, tiny_tokenizer, context_length=-1)


def _word_starts(word_of):
    """Per wordpiece: whether it begins a word ([SEP], marked True, does)."""
    return [w is True or i == 0 or w != word_of[i - 1] for i, w in enumerate(word_of)]
