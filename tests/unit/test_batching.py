from __future__ import annotations

import asyncio

from streams.batching import FETCH_MAX_WAIT_MS, ChunkingApp


def test_the_workers_fetches_wait_briefly_for_new_records() -> None:
    """A fetch held open for idle partitions delays every partition of that broker (see PromptFetchThread)."""

    async def fetch_wait_ms() -> int:
        app = ChunkingApp(
            "fetch-wait",
            batched_topics=frozenset({"llm.calls"}),
            chunk_records=100,
            broker="kafka://127.0.0.1:9",
            autodiscover=False,
            web_enabled=False,
            store="memory://",
        )
        consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
        try:
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    assert asyncio.run(fetch_wait_ms()) == FETCH_MAX_WAIT_MS == 100
