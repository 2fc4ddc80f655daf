"""One self-contained HTML page to review an extraction: ``extract --format=html``.

The page needs nothing from the network (no external scripts, styles or fonts) and is built on
the server side, so it shows everything before any script runs; the small inline script only
adds the type filter and the hover links. It holds:

* a header with the run (folder, encoder, decoder), its test scores against the corpus gold
  when the run has them, and the counts of what the page shows;
* a legend with each entity type's colour and count, whose check boxes filter the highlights
  by type;
* each document (a trial for ClinicalTrials.gov input) with its criteria grouped by section
  (inclusion, exclusion, none); in each criterion every entity highlighted in its type's
  colour (nested entities as nested highlights, ``<mark data-id=...>``), beside it the
  relations as a compact list whose items light up both of their entities, and the grouped
  view (each main entity with its values, temporal, negation, ...).

1,000 trials make one file of about 25 MB that a browser shows in a second or two: the page
is plain HTML with one CSS rule per type, the browser lays out only the trials in view
(``content-visibility``), and the script does no layout work (``benchmarks/review_page.py``
measures it).
"""

from __future__ import annotations

import datetime
import html
import json
import pathlib
import re

from jointre_jax.extraction import Criterion, DocumentExtraction
from jointre_jax.grouping import group_criterion

# Colours of Chia's entity types; other types take the palette's colours in turn.
TYPE_COLOURS = {
    "Condition": "#8dd3c7", "Drug": "#fdb462", "Procedure": "#fccde5", "Measurement": "#bebada",
    "Observation": "#80b1d3", "Person": "#b3de69", "Device": "#fb8072", "Value": "#ffed6f",
    "Temporal": "#a6cee3", "Qualifier": "#d9d9d9", "Negation": "#e78ac3", "Multiplier": "#cab2d6",
    "Reference_point": "#bc80bd", "Mood": "#fdbf6f", "Visit": "#ccebc5",
}  # fmt: skip
PALETTE = (
    "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
    "#d9d9d9", "#bc80bd", "#ccebc5", "#ffed6f", "#a6cee3", "#fdbf6f", "#cab2d6", "#b2df8a",
)  # fmt: skip
SECTION_TITLES = {"inclusion": "Inclusion criteria", "exclusion": "Exclusion criteria",
                  "none": "Criteria"}  # fmt: skip

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222}
header{background:#f4f6f8;border-bottom:1px solid #d0d7de;padding:12px 20px;position:sticky;
top:0;z-index:2}
header h1{font-size:18px;margin:0 0 4px}
header .meta{color:#555;font-size:12px}
.legend{margin-top:8px;display:flex;flex-wrap:wrap;gap:6px 14px}
.legend label{cursor:pointer;font-size:12px}
main{padding:8px 20px 40px}
.doc{content-visibility:auto;contain-intrinsic-size:auto 900px}
.doc h2{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #eee}
.doc h3{font-size:13px;margin:10px 0 4px;color:#444;text-transform:uppercase;letter-spacing:.04em}
.criterion{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:14px;
padding:6px 0;border-bottom:1px dotted #e4e4e4}
.text{white-space:pre-wrap}
mark{border-radius:3px;padding:0 1px;color:inherit}
mark mark{padding:0 2px;border-bottom:2px solid rgba(0,0,0,.35)}
mark.lit{outline:2px solid #d33}
.side{font-size:12px;color:#333}
.side ul{margin:0;padding-left:16px}
.rel{color:#666;font-style:italic}
.side a{color:inherit;text-decoration:underline dotted;cursor:pointer}
.grouped{margin-top:4px;color:#444}
.none{color:#999}
"""

SCRIPT = """
document.querySelectorAll('.legend input').forEach(function (box) {
  box.addEventListener('change', function () {
    document.body.classList.toggle('hide-' + box.dataset.type, !box.checked);
  });
});
function light(item, on) {
  item.querySelectorAll('a[data-ref]').forEach(function (a) {
    var mark = document.querySelector('mark[data-id="' + a.dataset.ref + '"]');
    if (mark) { mark.classList.toggle('lit', on); }
  });
}
document.querySelectorAll('.relations li').forEach(function (item) {
  item.addEventListener('mouseenter', function () { light(item, true); });
  item.addEventListener('mouseleave', function () { light(item, false); });
});
"""


def run_info(extractor, workdir, members=()) -> dict:
    """What the page header says about the run: folder, encoder, decoder, test scores (an
    ensemble with ``members``: all its folders, and no single run's scores)."""
    config, workdir = extractor.config, pathlib.Path(workdir)
    info = {
        "run": " + ".join(map(str, (workdir, *members))),
        "encoder": str(config.model.encoder),
        "decoder": str(config.model.ner_decoder),
        "created": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }
    if members:
        info["ensemble"] = 1 + len(members)
    metrics = workdir / "metrics.json"
    if metrics.exists() and not members:
        corpus = json.loads(metrics.read_text()).get("corpus", {})
        info["scores"] = {k: corpus[k]["f1"] for k in ("ner", "re_e2e") if k in corpus}
    return info


def css_name(entity_type: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", entity_type)


def render(extractions: list[DocumentExtraction], info: dict) -> str:
    """The whole page (see the module docstring)."""
    types: dict[str, int] = {}
    for extraction in extractions:
        for entity in extraction.entities:
            types[entity.type] = types.get(entity.type, 0) + 1
    others = iter(PALETTE * (1 + len(types) // len(PALETTE)))
    colours = {t: TYPE_COLOURS.get(t) or next(others) for t in sorted(types)}
    rules = []
    for entity_type, colour in colours.items():
        name = css_name(entity_type)
        rules.append(f"mark.t-{name}{{background:{colour}}}")
        rules.append(f"body.hide-{name} mark.t-{name}{{background:none;border-bottom:none}}")
    criteria = sum(len(e.criteria) for e in extractions)
    relations = sum(len(e.relations) for e in extractions)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Extraction review: {html.escape(info.get('run', ''))}</title>",
        f"<style>{STYLE}{''.join(rules)}</style></head><body>",
        _header(info, len(extractions), criteria, sum(types.values()), relations),
        _legend(types, colours),
        "</header><main>",
    ]
    number = 0
    for extraction in extractions:
        parts.append(f'<section class="doc" id="doc-{html.escape(extraction.doc_id)}">')
        parts.append(f"<h2>{html.escape(extraction.doc_id)}</h2>")
        for section in ("inclusion", "exclusion", "none"):
            chosen = [c for c in extraction.criteria if c.section == section]
            if not chosen:
                continue
            if section != "none" or len({c.section for c in extraction.criteria}) > 1:
                parts.append(f"<h3>{SECTION_TITLES[section]}</h3>")
            for criterion in chosen:
                number += 1
                parts.append(_criterion(criterion, f"c{number}"))
        parts.append("</section>")
    parts.append(f"</main><script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)


def _header(info: dict, documents: int, criteria: int, entities: int, relations: int) -> str:
    scores = info.get("scores") or {}
    score_text = (
        "test F1 against the corpus gold: "
        + ", ".join(
            f"{'NER' if k == 'ner' else 'RE end-to-end'} {100 * v:.1f}" for k, v in scores.items()
        )  # fmt: skip
        if scores
        else "no test scores in this run"
    )
    if info.get("ensemble"):
        score_text = f"an ensemble of {info['ensemble']} runs: no single run's test scores"
    meta = (
        f"run {info.get('run', '?')} · encoder {info.get('encoder', '?')} · decoder "
        f"{info.get('decoder', '?')} · {score_text} · made {info.get('created', '')}"
    )
    counts = (
        f"{documents} documents · {criteria} criteria · {entities} entities · {relations} relations"
    )
    return (
        "<header><h1>Extraction review</h1>"
        f'<div class="meta">{html.escape(meta)}</div>'
        f'<div class="meta" id="counts">{html.escape(counts)}</div>'
    )


def _legend(types: dict[str, int], colours: dict[str, str]) -> str:
    items = []
    for entity_type in sorted(types):
        name = html.escape(css_name(entity_type))
        items.append(
            f'<label><input type="checkbox" checked data-type="{name}"> '
            f'<mark class="t-{name}">{html.escape(entity_type)}</mark> {types[entity_type]}</label>'
        )
    return f'<div class="legend" title="Show or hide a type">{"".join(items)}</div>'


def _criterion(criterion: Criterion, key: str) -> str:
    """One criterion: highlighted text, its relations and its grouped view."""
    names = {e.id: e.text for e in criterion.entities}
    text = _highlighted(criterion, key)
    if criterion.relations:
        items = []
        for r in criterion.relations:
            items.append(
                f'<li><a data-ref="{key}-{r.head}">{html.escape(names.get(r.head, r.head))}</a> '
                f'<span class="rel">{html.escape(r.type)}</span> '
                f'<a data-ref="{key}-{r.tail}">{html.escape(names.get(r.tail, r.tail))}</a> '
                f"({r.score:.2f})</li>"
            )
        relations = f'<ul class="relations">{"".join(items)}</ul>'
    else:
        relations = '<div class="none">no relations</div>'
    grouped = _grouped(criterion)
    place = f"{criterion.section}, characters {criterion.start}-{criterion.end}"
    return (
        f'<div class="criterion" id="{key}" title="{html.escape(place)}">'
        f'<div class="text">{text}</div><div class="side">{relations}{grouped}</div></div>'
    )


def _highlighted(criterion: Criterion, key: str) -> str:
    """The criterion's text with nested ``<mark>`` highlights (crossing spans, which no decoder
    outputs, would be shown unnested: the later one as plain text)."""
    text, base = criterion.text, criterion.start
    roots: list = []
    stack: list = []
    pieces = [(a, b, e) for e in criterion.entities for a, b in e.spans]  # fragments apart
    for start, end, entity in sorted(pieces, key=lambda p: (p[0], -p[1])):
        while stack and stack[-1][1] <= start:
            stack.pop()
        if stack and end > stack[-1][1]:
            continue  # crosses the enclosing entity
        node = (start, end, entity, [])
        (stack[-1][3] if stack else roots).append(node)
        stack.append(node)

    def render(lo: int, hi: int, nodes) -> str:
        out, position = [], lo
        for start, end, entity, children in nodes:
            start, end = start - base, end - base
            out.append(html.escape(text[position:start]))
            name = css_name(entity.type)
            out.append(
                f'<mark class="t-{name}" data-id="{key}-{entity.id}" '
                f'title="{html.escape(entity.type)} {entity.id}">'
                f"{render(start, end, children)}</mark>"
            )
            position = end
        out.append(html.escape(text[position:hi]))
        return "".join(out)

    return render(0, len(text), roots)


def _grouped(criterion: Criterion) -> str:
    """The grouped view: a line per main entity with its attributes."""
    records = group_criterion(criterion)["records"]
    if not records:
        return ""
    lines = []
    for record in records:
        entity = record["entity"]
        attributes = []
        for field, value in record.items():
            if field in ("entity", "negated", "links") or not isinstance(value, list):
                continue
            attributes.append(f"{field}: " + "; ".join(html.escape(v["text"]) for v in value))
        if record.get("negated"):
            attributes.insert(0, "negated")
        detail = f" — {', '.join(attributes)}" if attributes else ""
        lines.append(
            f"<li><b>{html.escape(entity['type'])}</b> {html.escape(entity['text'])}{detail}</li>"
        )
    return f'<ul class="grouped" title="grouped view">{"".join(lines)}</ul>'
