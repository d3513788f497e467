"""A throwaway PostgreSQL server for tests: installs Debian's postgresql, starts one, stops it.

    python tools/pg_server.py install      # apt-get install postgresql, unless it is there
    python tools/pg_server.py start        # prints the URL of an empty database, and the folder
    python tools/pg_server.py stop FOLDER  # stops that server and removes its folder

The tests start one per session through :func:`start` (tests/conftest.py, ``postgres_url``).
The server lives in a fresh folder under the temp directory: data, log and unix socket, listening
on a free loopback port, trusting local connections, without fsync (nothing in it outlives the
tests). PostgreSQL refuses to run as root: as root, every server command runs as the ``postgres``
system user (created by the Debian package). Standard library only.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "postgresql"
DATABASE = "robustact"
SERVER_OPTIONS = ("-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                  "-c full_page_writes=off -c max_connections=100")


class ServerError(RuntimeError):
    """The PostgreSQL server could not be installed, started or stopped."""


@dataclass
class Server:
    """A running throwaway server: its folder, port and the URL of its empty database."""

    folder: Path
    port: int
    bindir: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def stop(self) -> None:
        """Stop the server (immediately: nothing in it is kept) and remove its folder."""
        stop(self.folder, self.bindir)


def bindir() -> Path | None:
    """The newest PostgreSQL server binaries: ``$PG_BINDIR``, Debian's
    /usr/lib/postgresql/VERSION/bin, or the folder of ``initdb`` on the PATH."""
    given = os.environ.get("PG_BINDIR")
    if given and (Path(given) / "initdb").is_file():
        return Path(given)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def install() -> Path:
    """The server binaries, installing Debian's ``postgresql`` first when they are missing."""
    found = bindir()
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServerError(f"PostgreSQL is not installed and this is not root with apt-get; "
                          f"install the {PACKAGE} package (sudo apt-get install {PACKAGE})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", PACKAGE]
    for step in ([*command], ["apt-get", "update"], [*command]):
        done = subprocess.run(step, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, check=False)
        if done.returncode == 0 and step[1] == "install" and bindir() is not None:
            return bindir()  # type: ignore[return-value]
    raise ServerError(f"apt-get install {PACKAGE} failed: {_last_line(done.stderr)}")


def start(parent: str | None = None) -> Server:
    """Start a throwaway server (installing PostgreSQL if needed) and create its database."""
    binaries = install()
    folder = Path(tempfile.mkdtemp(prefix="robustact-pg-", dir=parent))
    try:
        _own(folder)
        _as_server_user([binaries / "initdb", "-D", folder / "data", "-U", "postgres",
                         "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"], folder)
        port = _start_on_free_port(binaries, folder)
        _as_server_user([binaries / "createdb", "-h", "127.0.0.1", "-p", str(port),
                         "-U", "postgres", DATABASE], folder)
    except BaseException:
        stop(folder, binaries)
        raise
    return Server(folder, port, binaries)


def stop(folder: str | Path, binaries: Path | None = None) -> None:
    """Stop the server of ``folder`` (if it runs) and remove the folder."""
    folder = Path(folder)
    binaries = binaries or bindir()
    if binaries is not None and (folder / "data" / "postmaster.pid").exists():
        _as_server_user([binaries / "pg_ctl", "-D", folder / "data", "-m", "immediate", "-w",
                         "stop"], folder, check=False)
    shutil.rmtree(folder, ignore_errors=True)


def _start_on_free_port(binaries: Path, folder: Path, tries: int = 3) -> int:
    """``pg_ctl start`` on a free loopback port (another one if the port was taken meanwhile)."""
    for attempt in range(tries):
        port = _free_port()
        options = f"{SERVER_OPTIONS} -c port={port} -c unix_socket_directories={folder}"
        done = _as_server_user([binaries / "pg_ctl", "-D", folder / "data", "-l",
                                folder / "server.log", "-o", options, "-w", "-t", "60", "start"],
                               folder, check=False)
        if done.returncode == 0:
            return port
        if attempt == tries - 1:
            log = (folder / "server.log").read_text(errors="replace") if (
                folder / "server.log").exists() else done.stderr
            raise ServerError(f"PostgreSQL did not start: {_last_line(log)}")
        time.sleep(0.2)
    raise AssertionError("unreachable")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _own(folder: Path) -> None:
    """As root, hand ``folder`` to the postgres system user (the server refuses root)."""
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")


def _as_server_user(command: list[object], folder: Path,
                    check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a server command, as the ``postgres`` user when we are root, in ``folder``."""
    args = [str(c) for c in command]
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    try:
        done = subprocess.run(args, cwd=folder, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        raise ServerError(f"{' '.join(args)} did not finish in 120 s") from None
    if check and done.returncode != 0:
        raise ServerError(f"{Path(args[4 if os.geteuid() == 0 else 0]).name} failed: "
                          f"{_last_line(done.stderr or done.stdout)}")
    return done


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("install", help="install Debian's postgresql unless it is there")
    sub.add_parser("start", help="start a server; print its database URL and folder")
    stop_parser = sub.add_parser("stop", help="stop a started server, remove its folder")
    stop_parser.add_argument("folder")
    args = parser.parse_args(argv)
    try:
        if args.action == "install":
            print(f"PostgreSQL binaries: {install()}")
        elif args.action == "start":
            server = start()
            print(f"{server.url}\n{server.folder}")
        else:
            stop(args.folder)
    except (ServerError, OSError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
