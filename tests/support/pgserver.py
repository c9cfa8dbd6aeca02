"""A throwaway PostgreSQL server for tests and benchmarks (Debian ``postgresql`` binaries).

``initdb`` in a temporary folder, ``pg_ctl start`` on a free 127.0.0.1 port (and a unix socket in
that folder), trust authentication for the local test user ``segwb``. PostgreSQL refuses to run
as root, so as root the folder is handed to the unprivileged ``nobody`` user and every server
command runs through ``runuser -u nobody``. :class:`Unavailable` says why when it cannot start
(binaries absent: ``apt-get install postgresql``, which ``make test`` does).

Example:
    >>> srv = PostgresServer.start()                        # doctest: +SKIP
    >>> url = srv.new_database()                            # postgresql://segwb@127.0.0.1:PORT/t1
    >>> srv.stop()
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class Unavailable(RuntimeError):
    """No PostgreSQL server can be started here (the message says why and what to install)."""


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4])
                   if Path(p).parts[4].isdigit() else 0)
    if not found:
        raise Unavailable("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): "
                          "apt-get install -y postgresql (make test does it) to run the PostgreSQL tests")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A running throwaway server; :meth:`stop` removes everything."""

    def __init__(self, base: Path, port: int, bindir: Path, prefix: list[str]):
        self.base, self.port, self.bindir, self.prefix = base, port, bindir, prefix
        self._names = itertools.count(1)

    @classmethod
    def start(cls, *, durable: bool = False) -> "PostgresServer":
        """Start a server. ``durable`` keeps fsync on (benchmarks); tests run with fsync off."""
        bindir = _bin_dir()
        base = Path(tempfile.mkdtemp(prefix="segwb-pg-"))
        prefix: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise Unavailable("running as root and runuser is missing: cannot start PostgreSQL unprivileged")
            pw = pwd.getpwnam("nobody")
            os.chown(base, pw.pw_uid, pw.pw_gid)
            prefix = ["runuser", "-u", "nobody", "--"]
        os.chmod(base, 0o700)
        data = base / "data"

        def run(*cmd: str) -> None:
            r = subprocess.run(prefix + list(cmd), capture_output=True, text=True, timeout=120, cwd=str(base))
            if r.returncode != 0:
                raise Unavailable(f"{Path(cmd[0]).name} failed ({r.returncode}): {(r.stderr or r.stdout)[-800:]}")

        try:
            run(str(bindir / "initdb"), "-D", str(data), "-U", "segwb", "--auth=trust", "--encoding=UTF8",
                "--no-sync", "--no-instructions")
            port = _free_port()
            opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=100"
            if not durable:
                opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "server.log"), "-w",
                "-t", "60", "start")
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise
        return cls(base, port, bindir, prefix)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://segwb@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str | None = None) -> str:
        """Create an empty database; returns its URL."""
        import psycopg

        name = name or f"t{next(self._names)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=segwb dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(self.prefix + [str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), "-m", "immediate",
                                      "-w", "stop"], capture_output=True, timeout=60, cwd=str(self.base))
        shutil.rmtree(self.base, ignore_errors=True)
