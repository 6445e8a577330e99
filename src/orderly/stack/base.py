"""What every local server has in common: a folder under .stack/, a PID file, ports on loopback, a readiness check.

Servers run detached (their own session) so they outlive ``orderly stack up`` and a Ctrl-C in its terminal. We use
psutil to inspect and stop processes and tenacity to await readiness; mirakuru was considered, but its executors
kill what they started when the starting Python process exits, and our servers must outlive it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import ClassVar

import psutil
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_exponential

from orderly.platform.settings import LOOPBACK, InfraSettings

SERVICE_USER = "orderly"


@cache
def debian_version(package: str) -> str:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "not installed"


class StackError(Exception):
    """A problem a person must fix, rendered as one line: server, cause, fix and the log to read."""

    def __init__(self, server: str, cause: str, fix: str, log: Path | None = None) -> None:
        self.server, self.cause, self.fix, self.log = server, cause, fix, log
        super().__init__(self.line())

    def line(self) -> str:
        where = f" (log: {self.log})" if self.log else ""
        return f"{self.server}: {self.cause} — fix: {self.fix}{where}"


@dataclass(frozen=True)
class StackContext:
    root: Path
    settings: InfraSettings
    run_as: str | None  # the system user servers run as; None when we are not root and run as ourselves
    kafka_heap_mb: int = 512


def ensure_service_user(root: Path) -> str | None:
    """As root, create the dedicated system user and make sure it can reach the stack folder."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            check=True,
            capture_output=True,
        )
    # The servers must traverse every folder above .stack/; add only the search bit where it is missing.
    for parent in reversed(root.resolve().parents):
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
    return SERVICE_USER


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> str:
    """Who listens on a port, for error messages; best effort."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(conn.pid)
                    return f"pid {conn.pid} ({proc.name()})"
    return "another process"


def accepts_tcp(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
        return True
    return False


def http_ok(url: str, *, auth: tuple[str, str] | None = None) -> bool:
    request = urllib.request.Request(url)  # noqa: S310 - loopback URL built from our own settings
    if auth:
        import base64

        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=1) as response:  # noqa: S310
            return 200 <= int(response.status) < 300
    except OSError:
        return False


def wait_until(check: Callable[[], bool], *, timeout: float) -> bool:
    """Poll ``check`` with a short exponential backoff until it is true or ``timeout`` passes."""
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=0.05, max=0.5),
        retry=retry_if_result(lambda ok: not ok),
        retry_error_callback=lambda _state: False,
    )
    return bool(retrying(check))


def exited(proc: psutil.Process) -> bool:
    """Whether a process has exited. A zombie has: its parent (e.g. the `orderly up` that started the stack and
    forgot the child) just has not reaped it, and psutil's own wait would take it for alive."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class ProcessDiedError(Exception):
    pass


class Server(ABC):
    """One server of the stack. Subclasses say how to prepare, launch and probe it."""

    name: ClassVar[str]
    package: ClassVar[str]  # the Debian package (or "maven") it comes from, for messages and versions
    binaries: ClassVar[Sequence[str]] = ()
    ready_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 30.0
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(self, ctx: StackContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings

    # --- what a subclass provides -------------------------------------------------------------------------------
    @property
    @abstractmethod
    def ports(self) -> dict[str, int]:
        """Every port the server binds, by role; the first is the one clients use."""

    @abstractmethod
    def command(self) -> list[str]: ...

    @abstractmethod
    def is_ready(self) -> bool: ...

    def version(self) -> str:
        """The installed version of its package (a server not installed from a Debian package says otherwise)."""
        return debian_version(self.package)

    def prepare(self) -> None:
        """Create the data folder and configuration (idempotent)."""

    def environment(self) -> dict[str, str]:
        return {}

    def own_pid_file(self) -> Path | None:
        """A PID file the server writes itself, preferred over the launcher's PID when present."""
        return None

    def after_stop(self) -> None:
        """Clean up helpers the server leaves behind."""

    # --- shared mechanics ---------------------------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        return self.ctx.root / self.name

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.name}.log"

    @property
    def console_path(self) -> Path:
        """Where the launched process's stdout and stderr go."""
        return self.dir / "console.log"

    @property
    def pid_path(self) -> Path:
        return self.dir / f"{self.name}.pid"

    @property
    def main_port(self) -> int:
        return next(iter(self.ports.values()))

    def fail(self, cause: str, fix: str, *, output: str | None = None) -> StackError:
        """A one-line error; ``output`` (a helper command's) is kept in the console log for the reader."""
        if output is not None:
            with self.console_path.open("a") as console:
                console.write(output)
            self.chown(self.console_path)
            return StackError(self.name, cause, fix, self.console_path)
        for log in (self.log_path, self.console_path):
            if log.exists() and log.stat().st_size:
                return StackError(self.name, cause, fix, log)
        return StackError(self.name, cause, fix)

    def check_binaries(self) -> None:
        for binary in self.binaries:
            if not (shutil.which(binary) or Path(binary).exists()):
                raise self.fail(f"{binary} is missing", f"run `make setup` (installs the {self.package} package)")

    def pid(self) -> int | None:
        """The PID of our running server, or None. A stale PID file (dead or reused PID) counts as not running."""
        for path in (self.own_pid_file(), self.pid_path):
            if path is None or not path.exists():
                continue
            text = path.read_text().split()
            if not text or not text[0].isdigit():
                continue
            pid = int(text[0])
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= path.stat().st_mtime + 5:
                    return pid
        return None

    def chown(self, path: Path) -> None:
        if self.ctx.run_as:
            shutil.chown(path, self.ctx.run_as, self.ctx.run_as)

    def mkdir(self, *paths: Path) -> None:
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)
            self.chown(path)

    def run_as_user(self, args: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a helper command (initdb, format, ...) as the service user, capturing its output."""
        return subprocess.run(
            args,
            cwd=self.dir,
            env={**os.environ, "HOME": str(self.dir), **self.environment(), **(env or {})},
            user=self.ctx.run_as,
            group=self.ctx.run_as,
            extra_groups=[] if self.ctx.run_as else None,
            capture_output=True,
            text=True,
            check=False,
        )

    def check_ports(self) -> None:
        for role, port in self.ports.items():
            if not port_is_free(port):
                raise self.fail(
                    f"{role} port {port} on {LOOPBACK} is taken by {port_owner(port)}",
                    "stop that process or choose another port (see `orderly stack status` for the settings)",
                )

    def start(self) -> int:
        """Launch the server detached from our session; returns its PID. The caller awaits readiness."""
        self.check_binaries()
        self.mkdir(self.dir)
        self.prepare()
        self.check_ports()
        log = self.console_path.open("ab")
        self.chown(self.console_path)
        try:
            proc = subprocess.Popen(
                self.command(),
                cwd=self.dir,
                env={**os.environ, "HOME": str(self.dir), **self.environment()},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=self.ctx.run_as,
                group=self.ctx.run_as,
                extra_groups=[] if self.ctx.run_as else None,
            )
        finally:
            log.close()
        self.pid_path.write_text(f"{proc.pid}\n")
        # Forget the child without waiting for it: it belongs to the stack, not to this process.
        proc.returncode = 0
        return proc.pid

    def await_ready(self) -> None:
        def ready_or_dead() -> bool:
            if self.pid() is None and not self._launcher_alive():
                raise ProcessDiedError
            return self.is_ready()

        try:
            ok = wait_until(ready_or_dead, timeout=self.ready_timeout)
        except ProcessDiedError:
            raise self.fail(
                "the server exited during start-up",
                "read the log's last lines; `orderly stack reset` wipes its data",
            ) from None
        if not ok:
            raise self.fail(
                f"not ready after {self.ready_timeout:.0f} s",
                "read the log; on a slow machine start again, `up` reuses what already runs",
            )

    def _launcher_alive(self) -> bool:
        if not self.pid_path.exists():
            return False
        text = self.pid_path.read_text().strip()
        return text.isdigit() and psutil.pid_exists(int(text)) and psutil.Process(int(text)).status() != "zombie"

    def stop(self) -> bool:
        """Stop our server if it runs; returns whether something was stopped."""
        pid = self.pid()
        stopped = False
        if pid is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                children = proc.children(recursive=True)
                proc.send_signal(self.stop_signal)
                alive = [] if wait_until(lambda: exited(proc), timeout=self.stop_timeout) else [proc]
                for straggler in [*alive, *children]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        straggler.kill()
                stopped = True
        self.after_stop()
        for path in (self.pid_path, self.own_pid_file()):
            if path is not None:
                path.unlink(missing_ok=True)
        return stopped
