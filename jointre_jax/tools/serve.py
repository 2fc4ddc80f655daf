"""Serve a trained model over HTTP: a long-lived extraction service (:mod:`jointre_jax.service`).

    jointre serve --model=DIR|HUB_ID|--workdir=RUN [--host=127.0.0.1] [--port=8000]
        [--max_batch_criteria=512] [--max_queue_criteria=8192] [--max_request_criteria=2048]
        [--max_body_bytes=4000000] [--timeout_s=60] [--batch_wait_ms=2]

    curl -s localhost:8000/extract -H 'Content-Type: application/json' \\
        -d '{"texts": ["Pregnant or breastfeeding women"]}'

The model loads and compiles its one prediction shape before the port opens; ``serve: ready``
on standard error then says where it listens. SIGTERM (or Ctrl-C) stops accepting, answers
the requests in flight, and exits with 128 + the signal (143, 130), as every program does.
The host defaults to loopback: put the service behind a proxy of your own (TLS,
authentication) before you open it to a network.
"""

from __future__ import annotations

import dataclasses
import errno
import signal
import socket
import sys

from absl import app, flags
from absl import logging as absl_logging

from jointre_jax import cli, service
from jointre_jax.errors import Preempted, UserError
from jointre_jax.extraction import Extractor

FLAGS = flags.FLAGS
LIMITS = service.Options()  # the defaults; a flag of each field's name sets it


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    cli.define_model_flags()
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
    flags.DEFINE_integer("port", 8000, "Port to listen on.", lower_bound=1, upper_bound=65535)
    flags.DEFINE_integer("num_devices", None, "Devices to use (default: the model's config).")
    flags.DEFINE_integer(
        "max_batch_criteria",
        LIMITS.max_batch_criteria,
        "Criteria per model call, over the requests batched.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "max_queue_criteria",
        LIMITS.max_queue_criteria,
        "Criteria waiting at most; beyond, 503 with Retry-After.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "max_request_criteria",
        LIMITS.max_request_criteria,
        "Criteria of one request at most; beyond, 413.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "max_body_bytes",
        LIMITS.max_body_bytes,
        "Bytes of one request body at most; beyond, 413.",
        lower_bound=1,
    )
    flags.DEFINE_float("timeout_s", LIMITS.timeout_s,
                       "Seconds to answer a request; beyond, 504.", lower_bound=0.001)  # fmt: skip
    flags.DEFINE_float("batch_wait_ms", LIMITS.batch_wait_ms,
                       "Milliseconds the worker waits for more requests to batch.",
                       lower_bound=0)  # fmt: skip


def _check_port(host: str, port: int) -> None:
    """UserError when ``host:port`` cannot be listened on (before the model loads)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        why = "in use" if err.errno == errno.EADDRINUSE else (err.strerror or str(err))
        raise UserError(f"--host={host} --port={port}: cannot listen there ({why})") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    import uvicorn

    model = cli.model_flag()
    _check_port(FLAGS.host, FLAGS.port)
    options = service.Options(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(LIMITS)})
    if options.max_request_criteria > options.max_queue_criteria:
        raise UserError("--max_request_criteria is above --max_queue_criteria: such a request "
                        "could never be queued")  # fmt: skip
    extractor = Extractor.load(model, FLAGS.num_devices, FLAGS.ensemble)
    api = service.create_app(extractor, options, model)
    config = uvicorn.Config(api, host=FLAGS.host, port=FLAGS.port, log_level="warning",
                            timeout_graceful_shutdown=None)  # fmt: skip

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):  # after the lifespan's compile: the port opens
            await super().startup(sockets)
            if self.started:
                shapes = api.state.service.compiled_shapes()
                print(f"serve: ready on http://{FLAGS.host}:{FLAGS.port} ({model}; {shapes} "
                      f"shape compiled in {api.state.service.compile_seconds:.1f} s)",
                      file=sys.stderr, flush=True)  # fmt: skip

    server = Server(config)
    # uvicorn catches SIGTERM and SIGINT, shuts down gracefully, then raises the signal again
    # for the handler it found: this one, which ends the program as the house does (143, 130).
    stopped = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: stopped.append(signum))
    server.run()
    if not server.started:
        raise UserError(f"could not listen on {FLAGS.host}:{FLAGS.port} (see above)")
    if stopped:
        raise Preempted(0, stopped[0], "every request in flight was answered")


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "serve")
