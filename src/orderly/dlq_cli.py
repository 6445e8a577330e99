"""`orderly dlq list | show | replay`: the dead letters of every pipeline, one command for all three.

This is the composition root of the tool: it builds each pipeline's store from that service's settings; the work is in
the services' ``deadletters`` modules behind orderly.platform.deadletters.DeadLetterStore.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Annotated, TypeVar

import typer

from orderly.platform.deadletters import DeadLetter, DeadLetterError, DeadLetterStore, Replayed, ReplayRefusedError

app = typer.Typer(help="Dead letters of ingest, notifier and items: list, show, replay.", no_args_is_help=True)

T = TypeVar("T")


class Pipeline(StrEnum):
    ingest = "ingest"
    notifier = "notifier"
    items = "items"


def _store(pipeline: Pipeline) -> DeadLetterStore:
    if pipeline is Pipeline.ingest:
        from orderly.ingest.deadletters import IngestDeadLetters
        from orderly.ingest.settings import IngestSettings

        return IngestDeadLetters(IngestSettings())
    if pipeline is Pipeline.notifier:
        from orderly.notifier.deadletters import NotifierDeadLetters
        from orderly.notifier.settings import NotifierSettings

        return NotifierDeadLetters(NotifierSettings())
    from orderly.items.deadletters import ItemsDeadLetters
    from orderly.items.settings import ItemsSettings

    return ItemsDeadLetters(ItemsSettings())


def _run(pipeline: Pipeline, work: Callable[[DeadLetterStore], Awaitable[T]]) -> T:
    from orderly.platform.logging import configure_logging
    from orderly.platform.settings import OrderlySettings

    configure_logging(OrderlySettings().log, process="dlq")

    async def main() -> T:
        async with _store(pipeline) as store:
            return await work(store)

    try:
        return asyncio.run(main())
    except DeadLetterError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except Exception as exc:  # a broker that does not answer: one line, no traceback
        typer.echo(f"error {pipeline.value}: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None


def _line(pipeline: str, letter: DeadLetter) -> str:
    parked = letter.parked_at.isoformat(timespec="seconds") if letter.parked_at else "?"
    return f"{pipeline}\t{letter.id}\t{parked}\t{letter.source}\t{letter.reason}"


Json = Annotated[bool, typer.Option("--json", help="one JSON object per dead letter")]


@app.command("list")
def list_command(
    pipeline: Annotated[Pipeline | None, typer.Argument(help="ingest, notifier or items (default: all three)")] = None,
    as_json: Json = False,
) -> None:
    """The dead letters waiting, oldest first: pipeline, id, parked at, source, reason."""
    pipelines = [pipeline] if pipeline else list(Pipeline)
    failed = False
    for name in pipelines:
        try:
            letters = _run(name, lambda store: store.list())
        except typer.Exit:  # its error is printed; the other pipelines are still listed
            failed = True
            continue
        for letter in letters:
            typer.echo(json.dumps({"pipeline": name.value, **letter.summary()}) if as_json else _line(name, letter))
        if not as_json:
            typer.echo(f"{name.value}: {len(letters)} dead letter{'s' * (len(letters) != 1)} waiting", err=True)
    if failed:
        raise typer.Exit(1)


@app.command("show")
def show_command(
    pipeline: Annotated[Pipeline, typer.Argument(help="ingest, notifier or items")],
    letter_id: Annotated[str, typer.Argument(metavar="ID", help="as `orderly dlq list` prints it")],
    as_json: Json = False,
) -> None:
    """One dead letter: its payload, why it was parked, and where it came from."""

    async def get(store: DeadLetterStore) -> DeadLetter:
        from orderly.platform.deadletters import find

        return await find(store, letter_id)

    letter = _run(pipeline, get)
    if as_json:
        typer.echo(json.dumps({"pipeline": pipeline.value, **letter.summary()}))
        return
    typer.echo(f"id:        {letter.id}")
    typer.echo(f"reason:    {letter.reason}")
    typer.echo(f"source:    {letter.source}")
    if letter.position:
        typer.echo(f"position:  {letter.position}")
    typer.echo(f"parked at: {letter.parked_at.isoformat() if letter.parked_at else '?'}")
    for key, value in letter.details.items():
        typer.echo(f"{key}: {value}")
    typer.echo("payload:")
    typer.echo(letter.pretty_payload())


@app.command("replay")
def replay_command(
    pipeline: Annotated[Pipeline, typer.Argument(help="ingest, notifier or items")],
    letter_id: Annotated[str | None, typer.Argument(metavar="[ID]", help="the dead letter to send back")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="every dead letter waiting, oldest first")] = False,
) -> None:
    """Send dead letters back where they came from; each is removed only after the source confirmed the re-send."""
    if (letter_id is None) == (not replay_all):
        typer.echo("error: give one dead letter ID or --all", err=True)
        raise typer.Exit(2)

    async def replay(store: DeadLetterStore) -> list[Replayed]:
        if letter_id is not None:
            return [await store.replay(letter_id)]
        done = []
        for letter in await store.list():
            try:
                done.append(await store.replay(letter.id))
            except ReplayRefusedError as exc:  # the others still go back
                done.append(Replayed(id=letter.id, target=letter.source, sent=False, note=str(exc), refused=True))
        return done

    outcomes = _run(pipeline, replay)
    for outcome in outcomes:
        verb = "refused" if outcome.refused else "replayed" if outcome.sent else "not sent"
        note = f" ({outcome.note})" if outcome.note else ""
        typer.echo(f"{pipeline.value}\t{outcome.id}\t{verb} → {outcome.target}{note}")
    if any(outcome.refused for outcome in outcomes):
        raise typer.Exit(1)
