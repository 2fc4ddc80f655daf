"""ClinicalTrials.gov records in: study records and AACT rows to criteria with their sections.

Readers (:func:`iter_entries` streams, :func:`read_records` collects; format detected from the
content or given):

* ``ctgov``: ClinicalTrials.gov API v2 study records: one study JSON, the API's search page
  ``{"studies": [...]}``, JSON lines (one study a line), or a folder of such files. The
  criteria text is ``protocolSection.eligibilityModule.eligibilityCriteria`` and the id
  ``protocolSection.identificationModule.nctId``;
* ``aact``: AACT's ``eligibilities.txt`` (pipe-delimited, a header with ``nct_id`` and
  ``criteria``; quoted fields may span lines).

A bad record (not JSON, no eligibility module, empty criteria, an NCT id seen before) is a
:class:`~jointre_jax.errors.UserError` naming the file and the record (line), or with
``lenient`` a skip counted by reason.

:func:`split_criteria` turns a record's criteria text into criteria:

* "Inclusion Criteria:" and "Exclusion Criteria:" headers (any case and spacing, "Key ..."
  allowed, text after the colon kept as a criterion) open the ``inclusion`` and ``exclusion``
  sections; text before any header belongs to section ``none``;
* a line starting with a bullet (``*``, ``-``, ``•``, ``·``, ``o``, ``1.``, ``1)``, ``a.``,
  ``(1)``, ``(a)``) starts a criterion; its text starts after the bullet;
* a line indented deeper than the start of the open criterion's first line continues it (a
  criterion wrapped over several lines); any other non-blank line starts a criterion;
* blank lines end a criterion; other headers (a line in capitals ending with ``:``, such as
  "DISEASE CHARACTERISTICS:") end it and are not criteria; "Patients with any of:" is a
  criterion.

Each criterion keeps ``section``, and ``start``/``end``: character offsets of its text (bullet
excluded, trailing spaces excluded) in the record's original criteria string.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import pathlib
import re

from jointre_jax.data.brat import BratFormatError, read_text
from jointre_jax.data.encode import split_lines
from jointre_jax.errors import UserError

FORMATS = ("auto", "text", "ctgov", "aact")
SECTIONS = ("inclusion", "exclusion", "none")
SECTION_SUFFIX = {"inclusion": "inc", "exclusion": "exc", "none": "none"}

_HEADER = re.compile(
    r"^[ \t]*(?:key[ \t]+|main[ \t]+|general[ \t]+)?(inclusion|exclusion)[ \t]+criteria\b"
    r"[^:\n]{0,40}?(?::[ \t]*|[ \t]*$)",
    re.IGNORECASE,
)
_BULLET = re.compile(
    r"^([ \t]*)(?:[*\-•·▪◦‣o]|\d{1,3}[.)]|[a-zA-Z][.)]|\(\d{1,3}\)|\([a-zA-Z]\))[ \t]+"
)
_LINE_BREAKS_TO_SPACES = str.maketrans("\r\n", "  ")
_SUBHEADER = re.compile(r"^[ \t]*[^\s*\-•][^:\n]{0,60}:[ \t]*$")  # and no lower-case letter


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One study's criteria text, and where it was read (``source``: file and record)."""

    nct_id: str
    criteria: str
    source: str


@dataclasses.dataclass(frozen=True)
class CriterionSpan:
    """A criterion of a record: ``criteria[start:end]``, in ``section``, beginning on line
    ``line`` (1-based, ``\\r\\n``, ``\\r`` or ``\\n`` breaks) of the criteria text."""

    section: str
    start: int
    end: int
    line: int


@dataclasses.dataclass(frozen=True)
class Skip:
    """A record that cannot be used (``lenient``): where it is, why (``reason``, a counter
    key such as ``empty_criteria``) and a message."""

    source: str
    reason: str
    message: str


@dataclasses.dataclass
class ReadResult:
    """The records read, and what was skipped (lenient), by reason, with a message each."""

    records: list[TrialRecord] = dataclasses.field(default_factory=list)
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    messages: list[str] = dataclasses.field(default_factory=list)


def split_criteria(text: str) -> list[CriterionSpan]:
    """The criteria of a record's criteria text (see the module docstring)."""
    spans: list[CriterionSpan] = []
    section = "none"
    open_start = open_end = None  # the criterion being read
    open_indent = open_line = 0

    def close():
        nonlocal open_start, open_end
        if open_start is not None and open_end > open_start:
            spans.append(CriterionSpan(section_of_open, open_start, open_end, open_line))
        open_start = open_end = None

    section_of_open = section
    for number, start, end in split_lines(text):
        line = text[start:end]
        if not line.strip():
            close()
            continue
        header = _HEADER.match(line)
        if header:
            close()
            section = header.group(1).lower()
            rest = start + header.end()
            if text[rest:end].strip():  # "Inclusion Criteria: adults aged 18 or more"
                section_of_open, open_start, open_indent = section, rest, rest - start
                open_end, open_line = start + len(line.rstrip()), number
            continue
        indent = len(line) - len(line.lstrip(" \t"))
        bullet = _BULLET.match(line)
        if bullet is None and open_start is not None and indent > open_indent:
            open_end = start + len(line.rstrip())  # a wrapped line of the open criterion
            continue
        close()
        if bullet is None and _SUBHEADER.match(line) and line.upper() == line:
            continue  # "DISEASE CHARACTERISTICS:", a heading of its own
        begin = start + (bullet.end() if bullet else indent)
        section_of_open, open_start, open_indent = section, begin, begin - start
        open_line = number
        if bullet:
            open_indent = len(bullet.group(1)) + 1  # deeper than the bullet: a continuation
        open_end = start + len(line.rstrip())
    close()
    return spans


def model_text(text: str, spans: list[CriterionSpan]) -> str:
    """``text`` with everything that is not criterion text blanked (spaces), and line breaks
    inside a criterion turned into spaces, so that each criterion is one line at its own
    offsets: the model reads one criterion a line, and offsets into it are offsets into
    ``text``."""
    out, position = [], 0
    for span in spans:  # in text order, apart
        out.append(re.sub(r"[^\r\n]", " ", text[position : span.start]))
        out.append(one_line(text[span.start : span.end]))
        position = span.end
    out.append(re.sub(r"[^\r\n]", " ", text[position:]))
    return "".join(out)


def one_line(text: str) -> str:
    """``text`` with each line break character (``\\r``, ``\\n``) a space: same offsets."""
    return text.translate(_LINE_BREAKS_TO_SPACES)


def study_from_brat(nct_id: str, sections: dict[str, list[str]]) -> dict:
    """A study record in the API v2 layout around criteria lines (``{"inclusion": [...],
    "exclusion": [...]}``, as in Chia's ``_inc``/``_exc`` documents): each line a bullet under
    its section's header. Reading it back gives exactly those lines (tested on Chia)."""
    blocks = []
    for section, title in (
        ("inclusion", "Inclusion Criteria:"),
        ("exclusion", "Exclusion Criteria:"),
    ):
        lines = [x.strip() for x in sections.get(section, []) if x.strip()]
        if lines:
            blocks.append(title + "\n\n" + "\n".join(f"  * {x}" for x in lines))
    return {
        "protocolSection": {
            "identificationModule": {"nctId": nct_id},
            "eligibilityModule": {"eligibilityCriteria": "\n\n".join(blocks)},
        }
    }


# ------------------------------------------------------------------------ readers


def detect_format(path: pathlib.Path) -> str:
    """ "ctgov", "aact" or "text" from the content of ``path`` (a folder: ctgov)."""
    if path.is_dir():
        return "ctgov" if any(path.glob("*.json")) else "text"
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith((b"{", b"[")):
        return "ctgov"
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace").lower()
    if "|" in first and "nct_id" in first and "criteria" in first:
        return "aact"
    return "text"


def read_records(source: str | pathlib.Path, fmt: str = "auto", lenient: bool = False):
    """The records of ``source`` (file or folder) as a :class:`ReadResult` (all in memory:
    :func:`iter_entries` streams them)."""
    result = ReadResult()
    for entry in iter_entries(source, fmt, lenient):
        if isinstance(entry, Skip):
            result.skipped[entry.reason] += 1
            result.messages.append(f"{entry.source}: {entry.message}")
        else:
            result.records.append(entry)
    return result


def iter_entries(source: str | pathlib.Path, fmt: str = "auto", lenient: bool = False):
    """Every record of ``source`` (file or folder), in order, streamed: a :class:`TrialRecord`,
    or with ``lenient`` a :class:`Skip` for a bad one (without: a UserError naming its file
    and line). JSON lines and AACT files are read a line at a time; a folder a file at a
    time; only a one-document JSON file (a study, a search page) is read whole."""
    path = pathlib.Path(source)
    if not path.exists():
        raise UserError(f"--input={source}: not found")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in ("ctgov", "aact"):
        raise UserError(f"{source}: not ClinicalTrials.gov records (format {fmt!r})")
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"--input={source}: no .json files in this folder")
    read = _json_entries if fmt == "ctgov" else _aact_entries
    yield from checked((entry for file in files for entry in read(file)), lenient)


def checked(entries, lenient: bool, hint: str = "--lenient skips and counts such records"):
    """:class:`TrialRecord` or :class:`Skip` of each raw (where, nct_id, criteria, problem)
    entry of a reader; an NCT id seen before is a ``duplicate_nct_id``. Without ``lenient``
    the first problem raises a UserError naming where it is (and ``hint``)."""
    seen: dict[str, str] = {}
    for where, nct_id, criteria, problem in entries:
        if problem is None and nct_id in seen:
            problem = ("duplicate_nct_id", f"{nct_id} already read at {seen[nct_id]}")
        if problem is not None:
            reason, message = problem
            if not lenient:
                raise UserError(f"{where}: {message} ({hint})")
            yield Skip(where, reason, message)
            continue
        seen[nct_id] = where
        yield TrialRecord(nct_id, criteria, where)


def count_entries(source: str | pathlib.Path, fmt: str = "auto") -> int | None:
    """How many entries :func:`iter_entries` will give (good and bad), cheaply: the non-blank
    lines of a JSON-lines file; None where only a full read would tell (the progress bar then
    shows no ETA)."""
    path = pathlib.Path(source)
    if path.is_dir() or (fmt if fmt != "auto" else detect_format(path)) != "ctgov":
        return None
    if not _is_json_lines(path):
        return None
    with open(path, "rb") as f:
        return sum(1 for raw in f if raw.strip())


def study_fields(study):
    """(nct_id, criteria, problem) of one v2 study object; ``problem``: None or (reason,
    message)."""
    if not isinstance(study, dict):
        return "", "", ("not_a_study", "not a study object")
    protocol = study.get("protocolSection") or {}
    raw = (protocol.get("identificationModule") or {}).get("nctId")
    if raw is not None and not isinstance(raw, str):
        return "", "", ("bad_nct_id", f"protocolSection.identificationModule.nctId is "
                                      f"{type(raw).__name__} {raw!r}, not a string")  # fmt: skip
    nct_id = (raw or "").strip()
    label = f" ({nct_id})" if nct_id else ""
    if not nct_id:
        return "", "", ("no_nct_id", "no protocolSection.identificationModule.nctId")
    module = protocol.get("eligibilityModule")
    if not isinstance(module, dict):
        return nct_id, "", ("no_eligibility_module", f"study{label} has no eligibilityModule")
    criteria = module.get("eligibilityCriteria")
    if not isinstance(criteria, str) or not criteria.strip():
        return nct_id, "", ("empty_criteria", f"study{label} has empty eligibilityCriteria")
    return nct_id, criteria, None


def _is_json_lines(file: pathlib.Path) -> bool:
    """True when ``file``'s first non-blank line is a whole JSON object and another
    non-blank line follows it: JSON lines, read a line at a time."""
    with open(file, "rb") as f:
        lines = (raw for raw in f if raw.strip())
        first = next(lines, None)
        try:
            whole = isinstance(json.loads(first), dict) if first is not None else False
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
        return whole and next(lines, None) is not None


def _json_entries(file: pathlib.Path):
    """(where, nct_id, criteria, problem) of every study of a v2 JSON or JSON-lines file."""
    if _is_json_lines(file):
        yield from _json_line_entries(file)
        return
    text = read_text(file)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as whole_error:
        if sum(1 for x in text.splitlines() if x.strip()) < 2:  # one broken object
            line = whole_error.lineno
            yield f"{file}:{line}", "", "", ("not_json", f"not JSON ({whole_error.msg})")
            return
        yield from _json_line_entries(file)  # JSON lines whose first line is broken
        return
    if isinstance(data, dict) and "studies" in data and "protocolSection" not in data:
        studies = data["studies"] if isinstance(data["studies"], list) else []  # search page
    elif isinstance(data, list):
        studies = data
    else:  # one study
        yield (str(file), *study_fields(data))
        return
    for number, study in enumerate(studies, start=1):
        yield (f"{file}: study {number}", *study_fields(study))


def _json_line_entries(file: pathlib.Path):
    """(where, nct_id, criteria, problem) of each non-blank line of a JSON-lines file."""
    with open(file, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{file}:{number}"
            try:
                study = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                yield where, "", "", ("not_utf8", f"not valid UTF-8 (byte {err.start} of the line)")
                continue
            except json.JSONDecodeError as err:
                yield where, "", "", ("not_json", f"not JSON ({err.msg})")
                continue
            yield (where, *study_fields(study))


def _decoded_lines(file: pathlib.Path):
    """The lines of ``file``, decoded; a line that is not UTF-8 raises BratFormatError with
    the file and line."""
    with open(file, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise BratFormatError(
                    file, number, f"not valid UTF-8 (byte 0x{raw[err.start]:02x})"
                ) from None


def _aact_entries(file: pathlib.Path):
    """(where, nct_id, criteria, problem) of every row of AACT's ``eligibilities.txt``,
    streamed."""
    reader = csv.reader(_decoded_lines(file), delimiter="|", quotechar='"')
    header = [h.strip().lower() for h in next(reader, [])]
    if "nct_id" not in header or "criteria" not in header:
        raise UserError(f"{file}:1: AACT header needs the columns nct_id and criteria")
    id_column, criteria_column = header.index("nct_id"), header.index("criteria")
    for row in reader:
        where = f"{file}:{reader.line_num}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(id_column, criteria_column):
            yield where, "", "", ("bad_row", f"{len(row)} columns, expected {len(header)}")
            continue
        nct_id, criteria = row[id_column].strip(), row[criteria_column]
        if not criteria.strip():
            yield where, nct_id, "", ("empty_criteria", f"{nct_id} has empty criteria")
            continue
        yield where, nct_id, criteria, None
