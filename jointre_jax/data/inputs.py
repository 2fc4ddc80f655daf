"""Plain-text inputs of extraction: a file, a folder of ``.txt`` files, or standard input.

ClinicalTrials.gov records are read by :mod:`jointre_jax.data.trials`.
"""

from __future__ import annotations

import pathlib
import sys

from jointre_jax.data.brat import BratFormatError, read_text
from jointre_jax.data.corpus import find_documents, read_split_ids
from jointre_jax.errors import UserError


def read_inputs(source: str, split_file: str | None = None) -> tuple[list[str], list[str]]:
    """(doc_ids, texts) of ``source``: a file, a folder of .txt files, or "-" (stdin).
    ``split_file``: a folder's documents it lists only (:func:`find_documents`; an id that
    matches no document is an error naming the file and line).

    Raises UserError for a missing path or an empty folder, BratFormatError (file and line)
    for text that is not UTF-8.
    """
    if split_file is not None:
        if not pathlib.Path(source).is_dir():
            raise UserError(f"--split_file needs a folder of .txt files as --input, not {source}")
        files = find_documents(source, read_split_ids(split_file), split_file)
        return [f.stem for f in files], [read_text(f) for f in files]
    if source == "-":
        data = sys.stdin.buffer.read()
        try:
            return ["stdin"], [data.decode("utf-8")]
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise BratFormatError("<stdin>", line, "not valid UTF-8") from None
    path = pathlib.Path(source)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise UserError(f"--input={source}: no .txt files in this folder")
        return [f.stem for f in files], [read_text(f) for f in files]
    if not path.is_file():
        raise UserError(f"--input={source}: not found")
    return [path.stem], [read_text(path)]
