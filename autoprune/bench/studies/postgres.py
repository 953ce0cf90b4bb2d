"""A throwaway PostgreSQL server on 127.0.0.1, for the many-machine tests and the reliability study.

It uses the server programs of Debian's ``postgresql`` package (``initdb`` and ``pg_ctl``, on the PATH or
under ``/usr/lib/postgresql/<version>/bin``): a new cluster in a temporary folder, trust authentication
on 127.0.0.1 only, a free port, no fsync. PostgreSQL refuses to run as root, so under root the server
runs as the ``postgres`` account (or ``nobody``) through ``runuser``. Stopping it removes the folder.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

USER = "autoprune"
"""The cluster's superuser (trust authentication: no password)."""


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started on this machine (the message says why)."""


def server_program(name: str) -> str:
    """The path of PostgreSQL's ``name`` program (``initdb``, ``pg_ctl``).

    Raises:
        PostgresUnavailable: if it is not installed.
    """
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise PostgresUnavailable(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_account() -> str | None:
    """The unprivileged account to run the server as when this process is root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        if shutil.which("runuser") is None:
            raise PostgresUnavailable("running as root, and runuser (util-linux) is missing to start PostgreSQL "
                                      "as another user")
        return name
    raise PostgresUnavailable("running as root, and no 'postgres' or 'nobody' account to run PostgreSQL as")


class LocalPostgres:
    """A PostgreSQL server of its own in a temporary folder, on 127.0.0.1 (see :func:`local_postgres`).

    Raises:
        PostgresUnavailable: from :meth:`start`, if the server programs are missing or the server does not start.
    """

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="autoprune-pg-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        self.account = _server_account()
        self.running = False

    def _run(self, *argv: str, timeout: float = 120) -> None:
        command = ["runuser", "-u", self.account, "--", *argv] if self.account else list(argv)
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, cwd=self.folder)
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise PostgresUnavailable(f"{Path(argv[0]).name} failed (status {done.returncode}): {last[0]}")

    def start(self) -> LocalPostgres:
        """Create the cluster and start the server; returns itself."""
        initdb, pg_ctl = server_program("initdb"), server_program("pg_ctl")
        if self.account:
            shutil.chown(self.folder, self.account)
        self._run(initdb, "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off -c max_connections=200"
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options, "-w", "start")
        self.running = True
        return self

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (letters, digits, underscores); returns its URL."""
        import psycopg

        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}: letters, digits and underscores only")
        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (at once) and remove its folder."""
        try:
            if self.running:
                self._run(server_program("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
                self.running = False
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def local_postgres() -> Iterator[LocalPostgres]:
    """A started :class:`LocalPostgres`, stopped (and its folder removed) when the block ends.

    Raises:
        PostgresUnavailable: if the server programs are missing or the server does not start.
    """
    server = LocalPostgres()
    try:
        yield server.start()
    finally:
        server.stop()
