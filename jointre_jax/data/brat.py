"""BRAT standoff reader: ``NAME.txt`` + ``NAME.ann`` into a :class:`Document`.

Offsets are exact: the text is decoded from bytes with no newline translation (most Chia files
are CRLF and BRAT offsets count the ``\\r``). Every line kind of the standoff format is handled
by rule:

* ``T`` text-bound annotations, contiguous (``a b``) or discontinuous (``a b;c d``);
* ``R`` binary relations (``Arg1:T1 Arg2:T2``);
* ``*`` n-ary equivalence groups (``*\\tOR T1 T2 T5``);
* ``E`` events, ``A``/``M`` attributes, ``N`` normalisations and ``#`` notes are parsed far
  enough to be recognised, then counted as ``ignored`` (the model cannot use them);
* blank lines carry nothing and are passed over.

Problems either raise :class:`BratFormatError` (naming the file and line) or, when reading is
lenient, are recorded: an annotation whose mention does not match its text slice or whose
offsets fall outside the text keeps a ``problem`` so that it is counted (never silently lost);
a line that cannot be parsed at all is counted in ``Document.skipped``.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import re

from jointre_jax.errors import UserError

_ID_RE = re.compile(r"^[A-Za-z0-9_\-.]+$")
_FRAGMENT_RE = re.compile(r"^(\d+) (\d+)$")


def _offset_problem(ordered: list[tuple[int, int]], length: int) -> tuple[str, str] | None:
    """(reason, detail) of fragments (in text order) that cannot be an entity, else None."""
    if any(a > b for a, b in ordered):
        return "end_before_start", "a fragment ends before it starts"
    if any(a == b for a, b in ordered):
        return "empty_fragment", "a fragment is empty"
    if any(ordered[i][1] > ordered[i + 1][0] for i in range(len(ordered) - 1)):
        return "overlapping_fragments", "two fragments overlap"
    if ordered[-1][1] > length:
        return "offset_out_of_range", f"beyond the end of the text ({length} characters)"
    return None


class BratFormatError(UserError, ValueError):
    """An annotation file that cannot be read as BRAT; ``str()`` starts with ``path:line:``."""

    def __init__(self, path: str | pathlib.Path, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


@dataclasses.dataclass(frozen=True)
class Entity:
    """A ``T`` annotation.

    ``fragments`` are ``(start, end)`` character offsets into the document text, end
    exclusive, in text order. ``problem`` is None for a sound annotation, otherwise the reason
    it cannot be used ("text_mismatch", "offset_out_of_range", "end_before_start",
    "empty_fragment", "overlapping_fragments").
    """

    id: str
    type: str
    fragments: tuple[tuple[int, int], ...]
    text: str
    line: int
    problem: str | None = None

    @property
    def start(self) -> int:
        return self.fragments[0][0]

    @property
    def end(self) -> int:
        return self.fragments[-1][1]


@dataclasses.dataclass(frozen=True)
class Relation:
    """An ``R`` annotation: directed ``arg1 -> arg2`` (entity ids)."""

    id: str
    type: str
    arg1: str
    arg2: str
    line: int


@dataclasses.dataclass(frozen=True)
class Group:
    """A ``*`` annotation: an n-ary group (e.g. OR) of entity ids as written in the file."""

    type: str
    members: tuple[str, ...]
    line: int


@dataclasses.dataclass
class Document:
    """One BRAT document: its text and every annotation read from its ``.ann``."""

    doc_id: str
    text: str
    txt_path: str
    ann_path: str
    entities: dict[str, Entity] = dataclasses.field(default_factory=dict)
    relations: list[Relation] = dataclasses.field(default_factory=list)
    groups: list[Group] = dataclasses.field(default_factory=list)
    # Recognised line kinds the model does not use ("event", "attribute", ...): count.
    ignored: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # Lines skipped in lenient mode, by reason ("malformed_line", "duplicate_id", ...).
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # Entities whose offsets were repaired, by repair ("trimmed_whitespace").
    repaired: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # True when the text could not be decoded (lenient mode); entities then keep a problem.
    unreadable_text: bool = False
    # "path:line: message" of each problem recorded instead of raised (lenient mode).
    messages: list[str] = dataclasses.field(default_factory=list)


def read_text(path: str | pathlib.Path) -> str:
    """Reads a UTF-8 file exactly (no newline translation, no BOM stripping).

    Raises BratFormatError naming the line of the first byte that is not UTF-8.
    """
    data = pathlib.Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise BratFormatError(
            path, line, f"not valid UTF-8 (byte 0x{data[err.start]:02x} at byte {err.start})"
        ) from None


_LINE_BREAK = re.compile(r"\r\n|\n|\r")


def _mention(text: str, fragments) -> str:
    """The mention BRAT writes for fragments: their slices joined by single spaces."""
    return " ".join(text[a:b] for a, b in fragments)


def _mention_matches(text: str, fragments, mention: str) -> bool:
    """True when ``mention`` is the fragments' text, line breaks written as single spaces."""
    written = _mention(text, fragments)
    return written == mention or _LINE_BREAK.sub(" ", written) == mention


def _trim_fragments(text: str, fragments):
    """Fragments with leading/trailing whitespace removed from each; None if one empties."""
    trimmed = []
    for a, b in fragments:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a == b:
            return None
        trimmed.append((a, b))
    return tuple(trimmed)


class _Reader:
    """Parses one ``.ann`` file line by line against its document text."""

    def __init__(self, doc: Document, lenient: bool):
        self.doc = doc
        self.lenient = lenient
        self.seen_ids: set[str] = set()

    def fail(self, line: int, reason: str, message: str) -> None:
        """Raises (strict) or counts the skipped line under ``reason`` (lenient)."""
        if not self.lenient:
            raise BratFormatError(self.doc.ann_path, line, message)
        self.doc.skipped[reason] += 1
        self.doc.messages.append(f"{self.doc.ann_path}:{line}: {message}")

    def problem(self, line: int, reason: str, message: str) -> str:
        """Raises (strict) or returns ``reason`` to be stored on the annotation (lenient)."""
        if not self.lenient:
            raise BratFormatError(self.doc.ann_path, line, message)
        self.doc.messages.append(f"{self.doc.ann_path}:{line}: {message}")
        return reason

    def claim_id(self, ann_id: str, line: int) -> bool:
        if not _ID_RE.match(ann_id):
            self.fail(line, "malformed_line", f"invalid annotation id {ann_id!r}")
            return False
        if ann_id in self.seen_ids:
            self.fail(line, "duplicate_id", f"annotation id {ann_id} defined twice")
            return False
        self.seen_ids.add(ann_id)
        return True

    def parse_line(self, raw: str, line: int) -> None:
        if not raw.strip():
            return
        kind = raw[0]
        if kind == "T":
            self.parse_entity(raw, line)
        elif kind == "R":
            self.parse_relation(raw, line)
        elif kind == "*":
            self.parse_group(raw, line)
        elif kind == "E":
            self.parse_other(raw, line, "event", min_fields=2)
        elif kind in "AM":
            self.parse_other(raw, line, "attribute", min_fields=2)
        elif kind == "N":
            self.parse_other(raw, line, "normalization", min_fields=2)
        elif kind == "#":
            self.parse_other(raw, line, "note", min_fields=2)
        else:
            self.fail(line, "malformed_line", f"unknown annotation kind {raw[:20]!r}")

    def parse_other(self, raw: str, line: int, name: str, min_fields: int) -> None:
        fields = raw.split("\t")
        if len(fields) < min_fields or not fields[1].strip():
            self.fail(line, "malformed_line", f"malformed {name} line {raw[:40]!r}")
            return
        self.doc.ignored[name] += 1

    def parse_entity(self, raw: str, line: int) -> None:
        fields = raw.split("\t", 2)
        if len(fields) != 3:
            self.fail(line, "malformed_line", "T line needs 3 tab-separated fields")
            return
        ann_id, middle, mention = fields
        type_and_offsets = middle.split(" ", 1)
        if len(type_and_offsets) != 2 or not type_and_offsets[0]:
            self.fail(line, "malformed_line", f"T line has no type and offsets: {middle!r}")
            return
        ent_type, offsets = type_and_offsets
        fragments = []
        for part in offsets.split(";"):
            match = _FRAGMENT_RE.match(part.strip())
            if not match:
                self.fail(line, "malformed_line", f"bad offsets {offsets!r} (want 'a b;c d')")
                return
            fragments.append((int(match.group(1)), int(match.group(2))))
        if not self.claim_id(ann_id, line):
            return
        text = self.doc.text
        problem = None
        # Fragments may be written in reading order rather than text order (Chia does); the
        # mention joins them in the written order, the Entity keeps them in text order.
        ordered = sorted(fragments)
        offset_problem = _offset_problem(ordered, len(text))
        if self.doc.unreadable_text:
            problem = "document_unreadable"
        elif offset_problem is not None:
            reason, detail = offset_problem
            problem = self.problem(line, reason, f"offsets {offsets}: {detail}")
        elif not _mention_matches(text, fragments, mention):
            trimmed = _trim_fragments(text, fragments)
            if trimmed is not None and _mention_matches(text, trimmed, mention):
                fragments = list(trimmed)
                self.doc.repaired["trimmed_whitespace"] += 1
            else:
                problem = self.problem(
                    line,
                    "text_mismatch",
                    f"{ann_id} mention {mention!r} does not match the text at {offsets}: "
                    f"{_mention(text, fragments)!r}",
                )
        self.doc.entities[ann_id] = Entity(
            ann_id, ent_type, tuple(sorted(fragments)), mention, line, problem
        )

    def parse_relation(self, raw: str, line: int) -> None:
        fields = raw.rstrip("\t ").split("\t")
        if len(fields) < 2:
            self.fail(line, "malformed_line", "R line needs an id and 'Type Arg1:X Arg2:Y'")
            return
        ann_id, body = fields[0], fields[1].split()
        args = dict(part.split(":", 1) for part in body[1:] if ":" in part)
        if len(body) != 3 or len(args) != 2 or not {"Arg1", "Arg2"} <= args.keys():
            self.fail(
                line, "malformed_line", f"R line body {fields[1]!r} is not 'Type Arg1:X Arg2:Y'"
            )
            return
        if not self.claim_id(ann_id, line):
            return
        self.doc.relations.append(Relation(ann_id, body[0], args["Arg1"], args["Arg2"], line))

    def parse_group(self, raw: str, line: int) -> None:
        fields = raw.rstrip("\t ").split("\t")
        body = fields[1].split() if len(fields) >= 2 else []
        if len(body) < 3:
            self.fail(line, "malformed_line", "* line needs 'Type ID ID ...' (two members or more)")
            return
        self.doc.groups.append(Group(body[0], tuple(body[1:]), line))


def read_document(
    txt_path: str | pathlib.Path,
    ann_path: str | pathlib.Path | None = None,
    lenient: bool = False,
) -> Document:
    """Reads one BRAT document.

    Args:
      txt_path: the document text (UTF-8).
      ann_path: its annotations; default: ``txt_path`` with suffix ``.ann``. A missing
        ``.ann`` is an error: an unannotated document would silently teach "no entity".
      lenient: record problems instead of raising (see module docstring).
    Returns:
      The Document; entity/relation references are not resolved here (see schema.py).
    """
    txt_path = pathlib.Path(txt_path)
    ann_path = pathlib.Path(ann_path) if ann_path is not None else txt_path.with_suffix(".ann")
    if not ann_path.exists():
        raise BratFormatError(ann_path, None, "annotation file is missing")
    doc = Document(doc_id=txt_path.stem, text="", txt_path=str(txt_path), ann_path=str(ann_path))
    try:
        doc.text = read_text(txt_path)
    except BratFormatError as err:
        if not lenient:
            raise
        doc.unreadable_text = True
        doc.skipped["document_not_utf8"] += 1
        doc.messages.append(str(err))
    ann_text = read_text(ann_path)
    reader = _Reader(doc, lenient)
    # Split on "\n" alone: str.splitlines() would also break on U+2028, U+0085, ... inside
    # a mention.
    for number, raw in enumerate(ann_text.split("\n"), start=1):
        reader.parse_line(raw.removesuffix("\r"), number)
    return doc


def write_document(doc_id: str, text: str, entities, relations, out_dir, groups=()) -> pathlib.Path:
    """Writes ``out_dir/doc_id.txt`` and ``.ann`` (BRAT); returns the ``.ann`` path.

    Args:
      entities: iterable of (id, type, fragments, mention) with fragments [(start, end)].
      relations: iterable of (id, type, arg1_id, arg2_id).
      groups: iterable of (type, member ids), written as ``*`` lines (e.g. OR groups).
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{doc_id}.txt").write_bytes(text.encode("utf-8"))
    lines = []
    for ann_id, ent_type, fragments, mention in entities:
        offsets = ";".join(f"{a} {b}" for a, b in fragments)
        lines.append(f"{ann_id}\t{ent_type} {offsets}\t{mention}")
    for ann_id, rel_type, arg1, arg2 in relations:
        lines.append(f"{ann_id}\t{rel_type} Arg1:{arg1} Arg2:{arg2}")
    for group_type, members in groups:
        lines.append(f"*\t{group_type} {' '.join(members)}")
    ann_path = out_dir / f"{doc_id}.ann"
    ann_path.write_bytes(("\n".join(lines) + "\n" if lines else "").encode("utf-8"))
    return ann_path
