"""The rules every command-line program of the project follows.

* An expected user error (:class:`~jointre_jax.errors.UserError`: bad input, a missing folder, a
  run that is not a run, a mistyped flag or config field, an output that cannot be written) is
  one line on standard error, ``program: what is wrong, where, and what to do``, and exit
  status 2. Operating-system errors on a named file (permission denied, not a directory) are
  reported the same way.
* A training stopped by SIGTERM or SIGINT (:class:`~jointre_jax.errors.Preempted`, after a
  checkpoint of its step) is one line too, and exit status 128 + the signal (143, 130).
* Anything else is a bug and keeps its traceback. ``--verbose`` (or ``JOINTRE_VERBOSE=1``)
  shows the traceback of user errors too.
* Outputs are checked, and their folders created, before any work starts
  (:func:`prepare_output`), so no finished work is lost to an unwritable path.

A program calls :func:`run` in place of ``absl.app.run``.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import functools
import os
import pathlib
import runpy
import sys
import tempfile

from absl import app, flags

from jointre_jax import locking
from jointre_jax.errors import Preempted, UserError

VERBOSE_ENV = "JOINTRE_VERBOSE"
EXIT_USER_ERROR = 2
HELP_FLAGS = {"--help", "-h", "-?", "--helpshort", "--helpfull"}
FLAGS = flags.FLAGS


def verbose(argv: list[str] | None = None) -> bool:
    """True when tracebacks are asked for (``--verbose`` or ``JOINTRE_VERBOSE=1``); before the
    flags are parsed, read ``--verbose`` from ``argv``."""
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        return True
    if argv is not None:
        return "--verbose" in argv
    return "verbose" in FLAGS and FLAGS["verbose"].present and bool(FLAGS.verbose)


def fail(program: str, message: str) -> None:
    """Prints ``program: message`` on standard error and exits with status 2."""
    print(f"{program}: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def run(main, program: str, required: tuple[str, ...] = ()) -> None:
    """``absl.app.run(main)`` with the rules of this module; ``required`` flags must be set."""
    if "verbose" not in FLAGS:
        flags.DEFINE_bool("verbose", False, f"Show tracebacks of user errors ({VERBOSE_ENV}=1).")
    try:
        app.run(
            functools.partial(_guarded, main, program),
            flags_parser=functools.partial(parse_flags, program, tuple(required)),
        )
    except SystemExit as done:
        if done.code == 1 and set(sys.argv[1:]) & HELP_FLAGS:  # absl exits 1 after --help
            sys.exit(0)
        raise


def _guarded(main, program: str, argv):
    try:
        return main(argv)
    except Preempted as err:  # a checkpoint was saved: not an error, a stop to resume from
        print(f"{program}: {err}", file=sys.stderr, flush=True)
        sys.exit(err.status)
    except UserError as err:
        if verbose():
            raise
        fail(program, str(err))
    except OSError as err:
        if verbose() or err.filename is None:
            raise
        fail(program, f"{err.filename}: {err.strerror or err} (--verbose for the traceback)")


def parse_flags(program: str, required: tuple[str, ...], argv: list[str]) -> list[str]:
    """Parses flags; a bad flag, a missing required one or a mistyped config field is one line."""
    try:
        rest = FLAGS(argv)
    except Exception as err:  # noqa: BLE001 - every parse failure is the user's flags
        if verbose(argv):
            raise
        fail(program, _flag_error_message(argv, err))
    _check_config_loaded(program)
    missing = [f"--{name}" for name in required if FLAGS[name].value is None]
    if missing:
        fail(program, f"missing {', '.join(missing)} (--help lists the flags)")
    return rest


def _flag_error_message(argv: list[str], err: Exception) -> str:
    for arg in argv[1:]:
        if not arg.startswith("--config.") or "=" not in arg:
            continue
        key = arg[len("--config.") : arg.index("=")]
        fields = config_fields(argv)
        if fields and key not in fields:
            hint = suggest(key, fields)
            hint = f"; did you mean {', '.join(hint)}?" if hint else ""
            return f"unknown config field {key!r} in {arg}{hint}"
    message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return f"{message} (--help lists the flags)"


def config_fields(argv: list[str]) -> list[str]:
    """Dotted names of every field of the ``--config`` file of ``argv`` (empty when it does
    not load)."""
    paths = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if not paths:
        return []
    try:
        config = runpy.run_path(paths[-1].split(":", 1)[0])["get_config"]()
    except Exception:  # noqa: BLE001 - the config file itself failed to load
        return []
    return sorted(_flatten(config))


def _check_config_loaded(program: str) -> None:
    """A ``--config`` file that failed to load is reported now, not at its first use."""
    if "config" not in FLAGS or FLAGS["config"].value is None:
        return
    try:
        FLAGS.config.keys()
    except Exception as err:  # noqa: BLE001 - ml_collections defers load errors
        lines = [x.strip() for x in str(err).splitlines() if x.strip()]
        filename = getattr(FLAGS["config"], "config_filename", None) or "?"
        fail(program, f"--config={filename}: cannot load it ({lines[-1] if lines else err})")


def _flatten(config, prefix: str = "") -> set[str]:
    names = set()
    for key, value in config.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            names |= _flatten(value, name + ".")
        names.add(name)
    return names


def suggest(key: str, fields: list[str], count: int = 3) -> list[str]:
    """The fields closest to a mistyped ``key`` (same section first, then anywhere)."""
    section, _, name = key.rpartition(".")
    scored = []
    for field in fields:
        f_section, _, f_name = field.rpartition(".")
        ratio = difflib.SequenceMatcher(None, name, f_name).ratio()
        if name and (name in f_name or f_name.startswith(name[:4])):
            ratio = max(ratio, 0.7)
        scored.append((ratio + (0.2 if f_section == section else 0.0), field))
    scored.sort(key=lambda x: (-x[0], x[1]))
    return [field for ratio, field in scored[:count] if ratio >= 0.55]


def prepare_output(path: str, flag: str, folder: bool = False) -> pathlib.Path | None:
    """Creates the folders of an output path, checks that it can be written and locks it for
    the rest of the program (:func:`jointre_jax.locking.hold`: a second program writing the
    same output stops, naming this one), before any work starts. ``folder``: the path is an
    output folder (BRAT, an encoder), not a file. ``-`` (standard output) returns None.
    Raises UserError naming the flag and the path."""
    if path == "-":
        return None
    target = pathlib.Path(path)
    parent = target if folder else target.parent
    where = f"--{flag}={path}"
    if not folder and target.is_dir():
        raise UserError(f"{where} is a folder; give a file name")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".write-check-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(
            f"{where}: cannot write in {parent} ({reason}); choose a writable location"
        ) from None
    # Beside the output, never inside it: a BRAT or encoder folder holds only what it should.
    _HELD.enter_context(locking.hold(target, f"--{flag}", folder=False, program=_program()))
    return target


_HELD = contextlib.ExitStack()  # the outputs' locks, held until the program ends
atexit.register(_HELD.close)


def _program() -> str:
    return pathlib.Path(sys.argv[0]).name if sys.argv else "jointre"


def define_ensemble_flag() -> None:
    """``--ensemble``, the runs or model folders that join the model's (evaluate, extract)."""
    flags.DEFINE_list(
        "ensemble", [],
        "More models of the model's config (other seeds' runs, model folders or hub ids), "
        "comma-separated: predict with the ensemble of them all (mean probabilities); the "
        "first model's config decides the rest.",
    )  # fmt: skip


def define_model_flags() -> None:
    """``--workdir`` (a training run) and ``--model`` (a model folder or hub id), of which a
    program that loads a trained model takes one (:func:`model_flag`), and ``--ensemble``."""
    flags.DEFINE_string("workdir", None, "Training run folder (its best checkpoint).")
    flags.DEFINE_string(
        "model", None,
        "Model folder (jointre export) or its hub id (ORG/NAME; from the cache when "
        "HF_HUB_OFFLINE=1); instead of --workdir.",
    )  # fmt: skip
    define_ensemble_flag()


def model_flag() -> str:
    """The model of ``--workdir`` or ``--model``; UserError unless exactly one is given."""
    given = [v for v in (FLAGS.workdir, FLAGS.model) if v]
    if len(given) != 1:
        raise UserError(
            "give the model as --model=DIR|HUB_ID (a model folder) or --workdir=RUN (a "
            "training run)" + (", not both" if given else "")
        )
    return given[0]
