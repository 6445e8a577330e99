"""`orderly sums …`: run the API instances, apply migrations, purge expired keys."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from typing import Annotated, Literal

import typer

from orderly.platform.settings import MySQLSettings

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
    serve("orderly.sums.app:create_app", SumsSettings().http, process_name=f"orderly-sums-{first}")


def _run_instances(first: int, count: int, mode: str | None) -> int:
    """Start ``count`` single-instance children and stop them all on SIGTERM/SIGINT or when one exits."""
    extra = ["--mode", mode] if mode else []
    children = [
        subprocess.Popen([sys.executable, "-m", "orderly", "sums", "api", "--port", str(first + i), *extra])
        for i in range(count)
    ]

    def stop(_signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [child.wait() for child in children]
    return max(codes, default=0)


@app.command()
def migrate() -> None:
    """Create the MySQL database when missing and apply pending migrations (idempotent)."""
    from orderly.platform.logging import configure_logging
    from orderly.sums.settings import SumsSettings

    settings = SumsSettings()
    configure_logging(settings.log, process="sums-migrate")
    applied = asyncio.run(migrate_database(settings.mysql))
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
