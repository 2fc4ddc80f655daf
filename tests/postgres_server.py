"""A real PostgreSQL server for the tests: the Debian ``postgresql`` package's binaries
(``make test`` installs them), a fresh cluster in a temporary folder, listening on 127.0.0.1
only, with a password (so a wrong one can be tried). As root (CI), the server runs as the
package's ``postgres`` user, since PostgreSQL refuses to run as root.

``start()`` returns a :class:`Server` in a new folder of the system's temporary folder (one
the ``postgres`` user can reach: pytest's own is private to root), removed by ``stop()``; or
raises :class:`Unavailable` saying why."""

from __future__ import annotations

import dataclasses
import glob
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile

from tests.conftest import free_port

USER, PASSWORD = "jointre", "test-password"


class Unavailable(Exception):
    """No server can start here; ``str()`` says why (the tests skip with it)."""


@dataclasses.dataclass
class Server:
    folder: pathlib.Path
    port: int
    bindir: pathlib.Path
    run_as: list[str]

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        data = str(self.folder / "data")
        command = [str(self.bindir / "pg_ctl"), "stop", "-m", "fast", "-D", data]
        subprocess.run([*self.run_as, *command], capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def _bindir() -> pathlib.Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return pathlib.Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return pathlib.Path(initdb).parent
    raise Unavailable("no PostgreSQL server binaries (initdb): `make test` installs the Debian "
                      "postgresql package as root with apt")  # fmt: skip


def start() -> Server:
    bindir = _bindir()
    folder = pathlib.Path(tempfile.mkdtemp(prefix="jointre-postgres-"))
    run_as = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root and there is no postgres user") from None
        run_as = ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}",
                  "--init-groups"]  # fmt: skip
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    password_file = folder / "password"
    password_file.write_text(PASSWORD + "\n")
    if run_as:
        os.chown(password_file, owner.pw_uid, owner.pw_gid)
    data = folder / "data"
    done = subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", USER, "--pwfile",
         str(password_file), "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise Unavailable(f"initdb failed: {done.stderr.strip()[-300:]}")
    port = free_port()
    options = f"-p {port} -h 127.0.0.1 -k {folder} -c fsync=off"
    done = subprocess.run(
        [*run_as, str(bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data),
         "-l", str(folder / "server.log"), "-o", options],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    if done.returncode != 0:
        log = (folder / "server.log").read_text()[-300:] if (folder / "server.log").exists() else ""
        raise Unavailable(f"pg_ctl start failed: {done.stderr.strip()[-300:]} {log}")
    return Server(folder, port, bindir, run_as)
