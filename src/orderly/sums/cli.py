"""`orderly sums …`: run the API instances, apply migrations, purge expired keys."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from orderly.platform.settings import HttpSettings, MySQLSettings

if TYPE_CHECKING:
    from starlette.types import ASGIApp

app = typer.Typer(
    help="The idempotent lifetime sum (MySQL + Redis), served by several instances.", no_args_is_help=True
)

Mode = Literal["batched", "reference"]


@app.command()
def api(
    port: Annotated[int | None, typer.Option(help="Port of the (first) instance; default 8201.")] = None,
    instances: Annotated[int, typer.Option(min=1, max=16, help="Run this many instances on consecutive ports.")] = 1,
    mode: Annotated[
        str | None, typer.Option(help="batched (default) or reference (the seed's design, benchmark baseline only).")
    ] = None,
) -> None:
    """Serve GET/POST /sum (and /test-sum-action)."""
    from orderly.platform.http import export_to_environment, serve
    from orderly.sums.settings import SumsSettings

    if mode not in (None, "batched", "reference"):
        raise typer.BadParameter("must be batched or reference", param_hint="--mode")
    first = port if port is not None else SumsSettings().http.port
    if instances > 1:
        raise typer.Exit(_run_instances(first, instances, mode))
    export_to_environment("ORDERLY_HTTP__", {"port": first})
    export_to_environment("ORDERLY_SUMS__", {"mode": mode})
    http = SumsSettings().http
    if http.workers == 1:
        raise typer.Exit(serve_in_process(http, process_name=f"orderly-sums-{first}"))
    serve("orderly.sums.app:create_app", http, process_name=f"orderly-sums-{first}")


def serve_in_process(http: HttpSettings, *, process_name: str, factory: Callable[[], ASGIApp] | None = None) -> int:
    """Serve one worker in this very process with granian's embedded server (``granian.server.embed``).

    granian's usual server forks a worker and stays behind as its supervisor: a second Python process holding the
    imported app (~58 MiB RSS measured), which put an instance over its 120 MB budget. With a single worker there is
    nothing for a supervisor to balance, so the worker runs here, on uvloop, and SIGTERM/SIGINT stop it gracefully
    (the lifespan shuts the batcher and pools down). If the process dies, its process manager restarts it
    (compose: ``restart: unless-stopped``; `orderly up` stops the group and reports it). Returns the exit code.
    ``factory`` builds the app (default: the production ``create_app``; fault-injection tests pass their own).
    """
    import importlib.util

    import uvloop
    from granian.constants import Interfaces
    from granian.server.embed import Server

    from orderly.sums.app import create_app

    if importlib.util.find_spec("setproctitle"):
        import setproctitle

        setproctitle.setproctitle(process_name)
    server = Server(
        factory or create_app,
        factory=True,
        address=http.host,
        port=http.port,
        interface=Interfaces.ASGI,
        log_enabled=False,
        backlog=2048,
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, server.stop)
        await server.serve()

    uvloop.run(run())
    return 1 if server.interrupt_children else 0  # the worker ended on its own (e.g. its startup failed)


def _run_instances(first: int, count: int, mode: str | None) -> int:
    """Start ``count`` single-instance children; stop them all on SIGTERM/SIGINT or as soon as any one exits.

    Returns the highest exit code; an instance that exited on its own while nobody asked it to stop counts as a
    failure (1) even with code 0, since instances serve until they are told to stop. The children die with this
    process even when it is killed with -9 (``PR_SET_PDEATHSIG``): no orphan instance keeps serving a port.
    """
    from orderly.platform.orphans import dying_with_this_process

    extra = ["--mode", mode] if mode else []
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "orderly", "sums", "api", "--port", str(first + i), *extra],
            preexec_fn=dying_with_this_process(),  # noqa: PLW1509 - no threads run here yet
        )
        for i in range(count)
    ]
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Block until any child has exited; WNOWAIT leaves it unreaped, so Popen.poll below still collects its code.
    while not any(child.poll() is not None for child in children):
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
    unexpected = not stopping
    stop(signal.SIGTERM, None)
    codes = [child.wait() for child in children]
    return max(*codes, 1) if unexpected else max(codes)


@app.command()
def migrate() -> None:
    """Create the MySQL database when missing and apply pending migrations (idempotent)."""
    from orderly.platform.lifecycle import run_oneshot
    from orderly.platform.logging import configure_logging
    from orderly.sums.settings import SumsSettings

    settings = SumsSettings()
    configure_logging(settings.log, process="sums-migrate")
    applied = run_oneshot(lambda: asyncio.run(migrate_database(settings.mysql)))
    typer.echo(f"sums: applied {applied or 'nothing (up to date)'}")


async def migrate_database(mysql: MySQLSettings) -> list[int]:
    import asyncmy

    from orderly.platform.migrations import load_migrations, migrate_mysql

    password = mysql.password.get_secret_value()
    admin = await asyncmy.connect(host=mysql.host, port=mysql.port, user=mysql.user, password=password)
    try:
        async with admin.cursor() as cur:
            await cur.execute(f"CREATE DATABASE IF NOT EXISTS `{mysql.database}` CHARACTER SET utf8mb4")
    finally:
        admin.close()
    conn = await asyncmy.connect(
        host=mysql.host, port=mysql.port, user=mysql.user, password=password, db=mysql.database
    )
    try:
        return await migrate_mysql(conn, service="sums", migrations=load_migrations("orderly.sums", "mysql"))
    finally:
        conn.close()


@app.command()
def purge(batch: Annotated[int, typer.Option(min=1, help="Rows per DELETE.")] = 1000) -> None:
    """Delete expired idempotency keys now, in bounded batches (the API instances also do this periodically)."""
    from orderly.platform.pools import mysql_pool
    from orderly.sums.repository import SumStore
    from orderly.sums.service import purge_expired_keys
    from orderly.sums.settings import SumsSettings

    settings = SumsSettings()

    async def run() -> int:
        async with mysql_pool(settings.mysql) as pool:
            return await purge_expired_keys(store=SumStore(pool), batch=batch)

    typer.echo(f"sums: purged {asyncio.run(run())} expired keys")
