"""QuoteStore against a real SecantusDB: batched writes, exactly once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from cryptostats.messages import Quote
from cryptostats.storage import QuoteStore, connect

START = datetime(2024, 1, 1, tzinfo=UTC)


def quote(index: int, coin: str = "bitcoin") -> Quote:
    observed_at = START + timedelta(minutes=15 * index)
    return Quote(coin, "usd", 100.0 + index, None, None, observed_at, observed_at)


@pytest.fixture
async def store(mongo_uri: str) -> AsyncIterator[QuoteStore]:
    client: AsyncMongoClient = connect(mongo_uri)
    database = client[f"test_{uuid.uuid4().hex[:12]}"]
    quote_store = QuoteStore(database, recent_prices=5)
    await quote_store.ensure_indexes()
    try:
        yield quote_store
    finally:
        await client.drop_database(database.name)
        await client.close()


async def test_a_batch_is_stored_once_however_often_it_is_saved(
    store: QuoteStore,
) -> None:
    batch = [quote(i) for i in range(8)] + [quote(0, "ethereum")]

    first = await store.save_many(batch)
    second = await store.save_many(batch)

    assert first.added == 9
    assert sorted(first.newest) == ["bitcoin", "ethereum"]
    assert second == (0, {}, set())


def recent_prices(document: dict[str, Any] | None) -> list[float]:
    """The recent prices of a `latest` document, in observed order."""
    assert document is not None
    return [entry["price"] for entry in document["recent"]]


async def test_the_latest_keeps_the_newest_prices_in_time_order(
    store: QuoteStore,
) -> None:
    await store.save_many([quote(i) for i in (3, 1, 2)])

    added, newest, _ = await store.save_many([quote(i) for i in (0, 6, 4, 5, 6)])
    latest = await store.latest("bitcoin")

    assert added == 4
    assert newest["bitcoin"] == quote(6)
    assert latest is not None
    assert recent_prices(latest) == [102.0, 103.0, 104.0, 105.0, 106.0]
    assert latest["observed_at"] == quote(6).observed_at


async def test_an_older_batch_leaves_the_latest_alone_but_joins_recent_prices(
    store: QuoteStore,
) -> None:
    await store.save_many([quote(9)])

    saved = await store.save_many([quote(i) for i in range(3)])
    again = await store.save_many([quote(i) for i in range(3)])
    latest = await store.latest("bitcoin")

    assert saved == (3, {}, {"bitcoin"})
    assert again == (0, {}, set())
    assert latest is not None
    assert recent_prices(latest) == [100.0, 101.0, 102.0, 109.0]


async def test_one_batch_advances_the_latest_of_each_of_its_coins(
    store: QuoteStore,
) -> None:
    coins = ["bitcoin", "ethereum", "solana"]
    await store.save_many([quote(1, coin) for coin in coins])

    added, newest, _ = await store.save_many(
        [quote(2, "bitcoin"), quote(0, "ethereum"), quote(3, "solana")]
    )
    documents = {coin: await store.latest(coin) for coin in coins}

    assert added == 3
    assert newest == {"bitcoin": quote(2), "solana": quote(3, "solana")}
    assert recent_prices(documents["bitcoin"]) == [101.0, 102.0]
    assert recent_prices(documents["ethereum"]) == [100.0, 101.0]
    assert recent_prices(documents["solana"]) == [101.0, 103.0]


async def test_two_stores_writing_one_coin_keep_its_prices_whole(
    store: QuoteStore, mongo_uri: str
) -> None:
    client: AsyncMongoClient = connect(mongo_uri)
    other = QuoteStore(client[store.database_name], recent_prices=5)
    try:
        await store.save_many([quote(1)])
        await other.save_many([quote(2)])

        added, newest, _ = await store.save_many([quote(3)])
        again = await store.save_many([quote(2)])
    finally:
        await client.close()
    latest = await store.latest("bitcoin")

    assert (added, newest) == (1, {"bitcoin": quote(3)})
    assert again == (0, {}, set())
    assert latest is not None
    assert recent_prices(latest) == [101.0, 102.0, 103.0]


class LatestUpdates(monitoring.CommandListener):
    """Counts the update commands sent to the `latest` collection."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "update" and event.command["update"] == "latest":
            self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_replica_behind_another_appends_a_batch_in_a_few_writes(
    store: QuoteStore, mongo_uri: str
) -> None:
    # The other replica moved the latest since `store` last looked: its
    # compare-and-set misses, and the batch takes the one-coin path, which
    # must not then check each of its quotes against the list one by one.
    updates = LatestUpdates()
    client: AsyncMongoClient = AsyncMongoClient(
        mongo_uri, tz_aware=True, event_listeners=[updates]
    )
    behind = QuoteStore(client[store.database_name], recent_prices=5)
    try:
        await behind.save_many([quote(0)])
        await store.save_many([quote(1)])
        before = updates.count

        added, newest, _ = await behind.save_many([quote(i) for i in range(5, 45)])
    finally:
        await client.close()
    latest = await store.latest("bitcoin")

    assert (added, newest) == (40, {"bitcoin": quote(44)})
    assert updates.count - before <= 2
    assert recent_prices(latest) == [140.0, 141.0, 142.0, 143.0, 144.0]


async def test_an_empty_batch_writes_nothing(store: QuoteStore) -> None:
    assert await store.save_many([]) == (0, {}, set())
