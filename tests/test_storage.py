"""QuoteStore against a real SecantusDB: batched writes, exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient, monitoring

from cryptostats.errors import LatestContendedError
from cryptostats.messages import Quote
from cryptostats.storage import HistoryQuery, QuoteStore, connect

START = datetime(2024, 1, 1, tzinfo=UTC)


def quote(index: int, coin: str = "bitcoin") -> Quote:
    observed_at = START + timedelta(minutes=15 * index)
    return Quote(coin, "usd", 100.0 + index, None, None, observed_at, observed_at)


@pytest.fixture
async def store(mongo_uri: str) -> AsyncIterator[QuoteStore]:
    client: AsyncMongoClient = connect(mongo_uri)
    database = client[f"test_{uuid.uuid4().hex[:12]}"]
    quote_store = QuoteStore(database)
    await quote_store.prepare()
    try:
        yield quote_store
    finally:
        await client.drop_database(database.name)
        await client.close()


async def recent_prices(store: QuoteStore, coin: str = "bitcoin") -> list[float]:
    """The newest five prices of `coin`, oldest first."""
    latest = await store.latest(coin, "usd")
    assert latest is not None
    before = latest["observed_at"] + timedelta(milliseconds=1)
    query = HistoryQuery(coin, "usd", before, limit=5, span_s=900 * 6)
    return await store.recent_prices(query)


async def test_a_batch_is_stored_once_however_often_it_is_saved(
    store: QuoteStore,
) -> None:
    batch = [quote(i) for i in range(8)] + [quote(0, "ethereum")]

    first = await store.save_many(batch)
    second = await store.save_many(batch)

    assert first.added == 9
    assert first.newest == {"bitcoin": quote(7), "ethereum": quote(0, "ethereum")}
    assert first.revised == set()
    # Saved again (a redelivery), the latest quotes are reported again, in
    # case their notice was lost, and bitcoin's older ones as a revision.
    assert second == (0, first.newest, {"bitcoin"})


async def test_the_latest_is_the_newest_quote_whatever_the_order(
    store: QuoteStore,
) -> None:
    await store.save_many([quote(i) for i in (3, 1, 2)])

    added, newest, revised = await store.save_many([quote(i) for i in (0, 6, 4, 5, 6)])
    latest = await store.latest("bitcoin", "usd")

    assert (added, newest, revised) == (4, {"bitcoin": quote(6)}, set())
    assert latest is not None
    assert latest["observed_at"] == quote(6).observed_at
    assert latest["price"] == 106.0
    assert await recent_prices(store) == [102.0, 103.0, 104.0, 105.0, 106.0]


async def test_an_older_batch_leaves_the_latest_alone_but_joins_recent_prices(
    store: QuoteStore,
) -> None:
    await store.save_many([quote(9)])

    saved = await store.save_many([quote(i) for i in range(3)])
    again = await store.save_many([quote(i) for i in range(3)])
    latest = await store.latest("bitcoin", "usd")

    assert saved == (3, {}, {"bitcoin"})
    assert again == (0, {}, {"bitcoin"})
    assert latest is not None
    assert latest["observed_at"] == quote(9).observed_at
    assert await recent_prices(store) == [100.0, 101.0, 102.0, 109.0]


async def test_one_batch_advances_the_latest_of_each_of_its_coins(
    store: QuoteStore,
) -> None:
    coins = ["bitcoin", "ethereum", "solana"]
    await store.save_many([quote(1, coin) for coin in coins])

    added, newest, revised = await store.save_many(
        [quote(2, "bitcoin"), quote(0, "ethereum"), quote(3, "solana")]
    )

    assert added == 3
    assert newest == {"bitcoin": quote(2), "solana": quote(3, "solana")}
    assert revised == {"ethereum"}
    assert await recent_prices(store, "bitcoin") == [101.0, 102.0]
    assert await recent_prices(store, "ethereum") == [100.0, 101.0]
    assert await recent_prices(store, "solana") == [101.0, 103.0]
    assert await store.latest_times([*coins, "dogecoin"], "usd") == {
        "bitcoin": quote(2).observed_at,
        "ethereum": quote(1).observed_at,
        "solana": quote(3).observed_at,
    }


async def test_the_latest_entry_keeps_the_gap_before_its_quote(
    store: QuoteStore,
) -> None:
    # History reads size their first window from it.
    await store.save_many([quote(i) for i in (0, 3, 1)])
    within_batch = await store.latest("bitcoin", "usd")
    await store.save_many([quote(7), quote(2)])
    since_the_latest = await store.latest("bitcoin", "usd")
    await store.save_many([quote(0, "ethereum")])
    first = await store.latest("ethereum", "usd")

    assert within_batch is not None
    assert within_batch["gap_s"] == 2 * 900
    assert since_the_latest is not None
    assert since_the_latest["gap_s"] == 4 * 900
    assert first is not None
    assert first["gap_s"] is None


async def test_two_stores_writing_one_coin_keep_the_newest(
    store: QuoteStore, mongo_uri: str
) -> None:
    client: AsyncMongoClient = connect(mongo_uri)
    other = QuoteStore(client[store.database_name])
    try:
        await store.save_many([quote(1)])
        await other.save_many([quote(2)])

        added, newest, _ = await store.save_many([quote(3)])
        again = await store.save_many([quote(2)])
    finally:
        await client.close()

    assert (added, newest) == (1, {"bitcoin": quote(3)})
    assert again == (0, {}, {"bitcoin"})
    assert await recent_prices(store) == [101.0, 102.0, 103.0]


async def test_stores_racing_on_the_latest_document_lose_no_coin(
    store: QuoteStore, mongo_uri: str
) -> None:
    # Four writers, each moving its own coins and one coin they all share,
    # at once: every compare-and-set that misses reads again, so no write
    # undoes another's. A writer that keeps missing tries the batch again,
    # as the Store does.
    clients = [connect(mongo_uri) for _ in range(3)]
    stores = [store] + [QuoteStore(c[store.database_name]) for c in clients]

    async def write(number: int, replica: QuoteStore) -> None:
        for step in range(6):
            batch = [quote(step, f"coin-{number}-{n}") for n in range(3)]
            batch.append(quote(step * 4 + number, "shared"))
            for _ in range(10):
                try:
                    await replica.save_many(batch)
                    break
                except LatestContendedError:
                    continue
            else:
                raise AssertionError(f"writer {number} never wrote step {step}")

    try:
        await asyncio.gather(*(write(n, s) for n, s in enumerate(stores)))
    finally:
        for client in clients:
            await client.close()
    coins = [f"coin-{n}-{m}" for n in range(4) for m in range(3)] + ["shared"]
    times = await store.latest_times(coins, "usd")

    assert times == {
        coin: quote(23 if coin == "shared" else 5).observed_at for coin in coins
    }


class LatestWrites(monitoring.CommandListener):
    """Counts the write commands sent to the `latest` collection."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        if name in ("insert", "update") and event.command[name] == "latest":
            self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_batch_of_many_coins_moves_their_latest_with_one_write(
    store: QuoteStore, mongo_uri: str
) -> None:
    # SecantusDB commits each statement on its own: one update per coin
    # made a tick of 1,000 coins take over a second.
    writes = LatestWrites()
    client: AsyncMongoClient = AsyncMongoClient(
        mongo_uri, tz_aware=True, event_listeners=[writes]
    )
    writer = QuoteStore(client[store.database_name])
    coins = [f"coin-{n:03d}" for n in range(200)]
    try:
        for step in range(3):
            before = writes.count
            saved = await writer.save_many([quote(step, coin) for coin in coins])
            assert len(saved.newest) == len(coins)
            assert writes.count - before == 1
    finally:
        await client.close()

    latest = await store.latest("coin-123", "usd")
    assert latest is not None
    assert latest["price"] == 102.0


async def insert_earlier_latest(store: QuoteStore, coin: str, number: int) -> None:
    """A `latest` document of the earlier layout: one per coin."""
    moment = quote(number).observed_at
    await store._latest.insert_one(
        {
            "_id": coin,
            "vs_currency": "usd",
            "price": 100.0 + number,
            "market_cap": None,
            "change_24h": None,
            "observed_at": moment,
            "fetched_at": moment,
            "recent": [{"observed_at": moment, "price": 100.0 + number}],
        }
    )


async def test_latest_documents_of_the_earlier_layout_are_moved_in(
    store: QuoteStore,
) -> None:
    await store.save_many([quote(5, "ethereum")])
    await insert_earlier_latest(store, "bitcoin", 4)
    await insert_earlier_latest(store, "ethereum", 2)

    await store.prepare()
    await store.prepare()

    assert await store.latest_times(["bitcoin", "ethereum"], "usd") == {
        "bitcoin": quote(4).observed_at,
        "ethereum": quote(5).observed_at,
    }
    assert await store._latest.count_documents({}) == 1


async def test_an_earlier_latest_of_a_coin_named_like_a_currency_is_moved_in(
    store: QuoteStore,
) -> None:
    # Its _id, "usd", is the one the new document takes.
    await insert_earlier_latest(store, "usd", 3)
    await insert_earlier_latest(store, "bitcoin", 4)

    await store.prepare()

    assert await store.latest_times(["bitcoin", "usd"], "usd") == {
        "bitcoin": quote(4).observed_at,
        "usd": quote(3).observed_at,
    }


async def test_an_empty_batch_writes_nothing(store: QuoteStore) -> None:
    assert await store.save_many([]) == (0, {}, set())
