"""The messages actors exchange over NATS, and their JSON form.

JSON carries timestamps as ISO 8601 UTC with a `Z` suffix and never holds
NaN or Infinity.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptostats.config import COIN_RE, VS_CURRENCY_RE

# No coin had a price before bitcoin's first block.
EARLIEST_OBSERVED = datetime(2009, 1, 3, tzinfo=UTC)
# How far ahead of our clock a provider's time may be: further, and a quote
# would stay the coin's latest (only a newer one replaces it) until then.
MAX_CLOCK_SKEW = timedelta(hours=1)


def plausible_observed_at(moment: datetime, now: datetime) -> bool:
    """Whether a quote can have been observed at `moment`, it being `now`."""
    return EARLIEST_OBSERVED <= moment <= now + MAX_CLOCK_SKEW


def to_iso(moment: datetime) -> str:
    """Format a timezone-aware datetime as ISO 8601 UTC ending in `Z`."""
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def from_iso(text: str) -> datetime:
    """Parse ISO 8601 (with `Z` or an offset) into an aware UTC datetime.

    Raises:
        ValueError: the text is not ISO 8601 or carries no timezone.
    """
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without timezone: {text!r}")

    return moment.astimezone(UTC)


def dumps(payload: Any) -> bytes:
    """Encode a message as compact JSON; NaN and Infinity raise ValueError."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def loads(data: bytes) -> Any:
    """Decode a JSON message; NaN and Infinity literals are rejected.

    Raises:
        ValueError: the data is not JSON or holds a non-finite number.
    """
    return json.loads(data, parse_constant=_reject_constant)


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} in message")


def _optional_float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"non-finite number {value!r}")

    return number


@dataclass(frozen=True, slots=True)
class Quote:
    """One observation of a coin, as true at `observed_at` per the provider."""

    coin: str
    vs_currency: str
    price: float
    market_cap: float | None
    change_24h: float | None
    observed_at: datetime
    fetched_at: datetime

    @property
    def msg_id(self) -> str:
        """The JetStream message id: the same quote always gets the same id."""
        epoch_ms = int(self.observed_at.timestamp() * 1000)
        return f"{self.coin}:{self.vs_currency}:{epoch_ms}"

    def to_dict(self) -> dict[str, Any]:
        """The quote as the JSON object of a price event."""
        return {
            "coin": self.coin,
            "vsCurrency": self.vs_currency,
            "price": self.price,
            "marketCap": self.market_cap,
            "24hChange": self.change_24h,
            "observedAt": to_iso(self.observed_at),
            "fetchedAt": to_iso(self.fetched_at),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quote:
        """Build a quote from its JSON object.

        Raises:
            ValueError: a field is missing, of the wrong type or not finite,
                or the coin or currency is not a valid id (both are names
                in the database).
        """
        try:
            coin, vs_currency = data["coin"], data["vsCurrency"]
            if not isinstance(coin, str) or not COIN_RE.fullmatch(coin):
                raise ValueError(f"not a coin id: {coin!r}")
            if not isinstance(vs_currency, str) or not VS_CURRENCY_RE.fullmatch(
                vs_currency
            ):
                raise ValueError(f"not a currency code: {vs_currency!r}")
            price = _optional_float(data["price"])
            if price is None or price <= 0:
                raise ValueError(f"price must be positive, got {data['price']!r}")
            return cls(
                coin=coin,
                vs_currency=vs_currency,
                price=price,
                market_cap=_optional_float(data.get("marketCap")),
                change_24h=_optional_float(data.get("24hChange")),
                observed_at=from_iso(data["observedAt"]),
                fetched_at=from_iso(data["fetchedAt"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed quote: {exc!r}") from exc


def encode_quotes(quotes: list[Quote]) -> bytes:
    """Encode a batch of quotes for the `quotes` subject."""
    return dumps({"quotes": [quote.to_dict() for quote in quotes]})


def decode_quotes(data: bytes) -> list[Quote]:
    """Decode a batch of quotes from the `quotes` subject.

    Raises:
        ValueError: the batch or one of its quotes is malformed.
    """
    payload = loads(data)
    if not isinstance(payload, dict) or not isinstance(payload.get("quotes"), list):
        raise ValueError("quote batch must be an object with a 'quotes' list")

    return [Quote.from_dict(item) for item in payload["quotes"]]
