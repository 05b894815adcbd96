"""Every NATS subject, queue group, stream and consumer name cryptostats uses.

These names are the public contract between actors, and between cryptostats
and outside subscribers; the README lists them too.
"""

from __future__ import annotations

PREFIX = "cryptostats"

# Ticker -> Fetcher: one request per scheduled moment; a Fetcher answers
# {"accepted": bool} at once. A plain publish (no reply) is a tick too.
TICK = f"{PREFIX}.tick"
FETCHER_QUEUE = "cryptostats-fetcher"

# Fetcher -> Publisher: a batch of validated quotes (request/reply, acked
# only once every quote of the batch is in the stream).
QUOTES = f"{PREFIX}.quotes"
PUBLISHER_QUEUE = "cryptostats-publisher"

# Publisher -> Store and outside subscribers: one event per quote (JetStream).
PRICE_STREAM = "CRYPTOSTATS_PRICES"
PRICE_PREFIX = f"{PREFIX}.price"
PRICE_WILDCARD = f"{PRICE_PREFIX}.>"
STORE_CONSUMER = "cryptostats-store"

# Store -> anyone: a notice after a newer quote became a coin's latest (sent
# again when that quote is delivered again).
STORED_PREFIX = f"{PREFIX}.stored"
# Store -> anyone: quotes older than a coin's latest reached the Store (an
# import of past history, a redelivery), so answers built from its recent
# prices, like /deviation, may be out of date although the latest did not
# change.
REVISED_PREFIX = f"{PREFIX}.revised"
# Store -> anyone: the database refused a write (sent on each failed try),
# so answers remembered from before may be out of date.
STORE_UNAVAILABLE = f"{PREFIX}.store.unavailable"

# HttpApi -> Store (request/reply): every query the Store answers.
QUERY_PREFIX = f"{PREFIX}.query"
QUERY_WILDCARD = f"{QUERY_PREFIX}.>"
# The latest quote and recent prices of a coin.
QUERY_LATEST = f"{QUERY_PREFIX}.latest"
# A page of a coin's stored quotes, newest first, before a time.
QUERY_HISTORY = f"{QUERY_PREFIX}.history"
# The observed time of each listed coin's latest quote.
QUERY_COINS = f"{QUERY_PREFIX}.coins"
# Whether a Store answers and its database with it (readiness checks).
QUERY_PING = f"{QUERY_PREFIX}.ping"
STORE_QUEUE = "cryptostats-store"


def price_subject(coin: str, vs_currency: str) -> str:
    """The JetStream subject of a coin's price events, e.g. `...price.usd.bitcoin`."""
    return f"{PRICE_PREFIX}.{vs_currency}.{coin}"


def stored_subject(coin: str) -> str:
    """The subject on which Store announces a coin's new latest quote."""
    return f"{STORED_PREFIX}.{coin}"


def revised_subject(coin: str) -> str:
    """The subject on which Store announces older quotes of a coin."""
    return f"{REVISED_PREFIX}.{coin}"
