"""Start and stop a throw-away PostgreSQL server for the shared-study tests.

The server runs from Debian's binaries (``/usr/lib/postgresql/<version>/bin``) on
127.0.0.1 with trust authentication, in a temporary data directory; it is stopped by the
PID in ``postmaster.pid``. PostgreSQL refuses to run as root, so as root the server runs as
the ``postgres`` user. ``scripts/with_postgres.sh`` does the same for ``.ci/run``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ENV_URL = "AUTOML_TEST_POSTGRES_URL"


def postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or ``None`` if PostgreSQL is not installed."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(d, "pg_ctl").exists() and Path(d, "initdb").exists():
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    url: str
    pid: int
    data_dir: Path

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown by PID (SIGINT), then wait for the process to go."""
        try:
            os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(self.pid, signal.SIGKILL)

    @property
    def log(self) -> Path:
        return self.data_dir.parent / "server.log"

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def start_postgres(
    database: str = "automl", listen: Sequence[str] = (), trust_networks: Sequence[str] = (),
    settings: Mapping[str, str] | None = None,
) -> PostgresServer:
    """initdb in a new directory under the system temp dir (the ``postgres`` user must reach
    it, which pytest's private temp dirs do not allow), start on a free port, create
    ``database``. Raises ``RuntimeError`` on failure.

    The server always listens on 127.0.0.1 (the returned URL uses it); ``listen`` adds
    addresses (e.g. the root side of a network namespace's veth pair) and ``trust_networks``
    adds CIDR ranges whose clients pg_hba.conf lets in without a password; ``settings`` are
    more server settings (``-c name=value``, e.g. ``log_connections=on``). The server's log
    is :attr:`PostgresServer.log`."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("no PostgreSQL binaries (install Debian's postgresql package)")
    base = Path(tempfile.mkdtemp(prefix="automl-pg-"))
    data, port = base / "data", _free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]

    def run(*cmd: str) -> None:
        done = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stdout}{done.stderr}")

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    if trust_networks:
        with (data / "pg_hba.conf").open("a") as hba:
            hba.writelines(f"host all all {net} trust\n" for net in trust_networks)
    addresses = ",".join(["127.0.0.1", *listen])
    opts = f"-p {port} -k {base} -c listen_addresses={addresses} -c fsync=off"
    opts += "".join(f" -c {k}={v}" for k, v in (settings or {}).items())
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "server.log"), "-w", "start")
    pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    server = PostgresServer(f"postgresql://postgres@127.0.0.1:{port}/{database}", pid, data)
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
    except Exception:
        server.remove()
        raise
    return server
