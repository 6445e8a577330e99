"""The ingest API started while RabbitMQ is down starts anyway: 503 naming the broker, not ready, nothing sent."""

from __future__ import annotations

import httpx
from asgi_lifespan import LifespanManager

from orderly.ingest.app import create_app
from orderly.ingest.settings import IngestSettings
from orderly.platform.settings import PostgresSettings, RabbitMQSettings
from tests.plumbing import free_port


async def test_ingest_started_with_rabbitmq_down_answers_503_broker_unavailable_and_is_not_ready() -> None:
    # PostgreSQL is down as well: had the refusal gone through the lost-confirm path, it would be outcome_unknown.
    settings = IngestSettings(rabbitmq=RabbitMQSettings(port=free_port()), postgres=PostgresSettings(port=free_port()))
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://ingest") as client,
    ):
        ready = await client.get("/readyz")
        fast = await client.get("/ingest", params={"n": 7})
        invalid = await client.get("/ingest", params={"n": "seven"})
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"rabbitmq": False}
    assert fast.status_code == 503, fast.text
    assert fast.headers["retry-after"] == "1"
    assert (fast.json()["error"], fast.json()["dependency"]) == ("broker_unavailable", "rabbitmq")
    assert invalid.status_code == 400  # input is judged before the broker is needed
    assert invalid.json()["fields"][0]["field"] == "n[0]"
