"""Start, stop, inspect and wipe the whole local stack."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from orderly.platform.settings import InfraSettings
from orderly.stack.base import Server, StackContext, StackError, ensure_service_user
from orderly.stack.servers import ALL_SERVERS

log = logging.getLogger(__name__)


def default_root() -> Path:
    """``.stack/`` at the repository root (``ORDERLY_STACK_DIR`` overrides it)."""
    if env := os.environ.get("ORDERLY_STACK_DIR"):
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "src" / "orderly").is_dir():
            return folder / ".stack"
    return here / ".stack"


@dataclass(frozen=True)
class ServerStatus:
    name: str
    version: str
    ports: dict[str, int]
    pid: int | None
    ready: bool
    log: Path


class Stack:
    def __init__(self, *, root: Path | None = None, settings: InfraSettings | None = None) -> None:
        self.root = root or default_root()
        self.settings = settings or InfraSettings()
        self._run_as: str | None = None
        self._user_lock = threading.Lock()

    def servers(self, names: Iterable[str] | None = None) -> list[Server]:
        ctx = StackContext(root=self.root, settings=self.settings, run_as=self._run_as)
        servers = [cls(ctx) for cls in ALL_SERVERS]
        if names:
            wanted = set(names)
            unknown = wanted - {s.name for s in servers}
            if unknown:
                known = ", ".join(s.name for s in servers)
                raise StackError(", ".join(sorted(unknown)), "no such server", f"choose from {known}")
            servers = [s for s in servers if s.name in wanted]
        return servers

    def up(self, names: Sequence[str] | None = None) -> list[tuple[str, str, float]]:
        """Start what is not running, reuse what is; returns (server, "started"|"reused", seconds) per server."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._run_as = ensure_service_user(self.root)
        if self._run_as:
            shutil.chown(self.root, self._run_as, self._run_as)

        def bring_up(server: Server) -> tuple[str, str, float]:
            started = time.monotonic()
            if server.pid() is not None:
                server.await_ready()
                return server.name, "reused", time.monotonic() - started
            server.start()
            server.await_ready()
            return server.name, "started", time.monotonic() - started

        servers = self.servers(names)
        with ThreadPoolExecutor(max_workers=len(servers)) as pool:
            futures = [pool.submit(bring_up, server) for server in servers]
            results, errors = [], []
            for future in futures:
                try:
                    results.append(future.result())
                except StackError as error:
                    errors.append(error)
        if errors:
            raise errors[0] if len(errors) == 1 else ManyStackError(errors)
        return results

    def down(self, names: Sequence[str] | None = None) -> list[str]:
        """Stop only what the stack started (by its PID files); the servers are independent, so all at once."""
        servers = self.servers(names)
        with ThreadPoolExecutor(max_workers=len(servers)) as pool:
            stopped = list(pool.map(lambda server: server.stop(), servers))
        return [server.name for server, did in zip(servers, stopped, strict=True) if did]

    def restart(self, name: str) -> float:
        """Stop one server and start it again, as an operator's restart would; returns the seconds until ready."""
        with self._user_lock:  # restarts of several servers may run at once; the user is made once
            self._run_as = ensure_service_user(self.root)
        [server] = self.servers([name])
        began = time.monotonic()
        server.stop()
        server.start()
        server.await_ready()
        return time.monotonic() - began

    def status(self) -> list[ServerStatus]:
        return [
            ServerStatus(
                name=s.name,
                version=s.version(),
                ports=s.ports,
                pid=(pid := s.pid()),
                ready=pid is not None and s.is_ready(),
                log=s.log_path,
            )
            for s in self.servers()
        ]

    def reset(self) -> None:
        """Stop everything and wipe all data; downloaded jars under lib/ stay."""
        self.down()
        for server in self.servers():
            if server.dir.exists():
                shutil.rmtree(server.dir)


class ManyStackError(StackError):
    """Several servers failed at once: one line each."""

    def __init__(self, errors: list[StackError]) -> None:
        self.errors = errors
        Exception.__init__(self, "\n".join(e.line() for e in errors))

    def line(self) -> str:
        return "\n".join(e.line() for e in self.errors)
