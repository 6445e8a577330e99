"""`orderly notifier`: run one notifier instance; flags win over env and file."""

from __future__ import annotations

from typing import Annotated

import typer

from orderly.platform.flags import HealthPort, use_health_port

app = typer.Typer(help="notifier: log every order-status event (consumer group `notifier`).")


@app.callback(invoke_without_command=True)
def run(
    instance: Annotated[str | None, typer.Option(help="this instance's name in its output and the group")] = None,
    group: Annotated[str | None, typer.Option(help="consumer group (kafka.topic_prefix is prepended)")] = None,
    max_attempts: Annotated[int | None, typer.Option(help="processing attempts before the DLQ")] = None,
    commit_interval_ms: Annotated[int | None, typer.Option(help="background commit of stored offsets")] = None,
    health_port: HealthPort = None,
) -> None:
    """Consume loms.order-events and print one JSON line per event."""
    from orderly.notifier.consumer import run_notifier
    from orderly.notifier.settings import notifier_settings
    from orderly.platform.lifecycle import Shutdown, run_process
    from orderly.platform.logging import configure_logging

    use_health_port(health_port)
    settings = notifier_settings(
        instance=instance, group=group, max_attempts=max_attempts, commit_interval_ms=commit_interval_ms
    )
    configure_logging(settings.log, process=f"notifier {settings.notifier.instance}")

    async def main(shutdown: Shutdown) -> None:
        await run_notifier(settings, shutdown)

    run_process(main)
