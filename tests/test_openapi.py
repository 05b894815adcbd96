"""The OpenAPI document: complete, true to the running service, and the
source of the README's examples and of the /docs page."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from cryptostats.embedded import free_port
from cryptostats.fakegecko import FakeCoinGecko
from cryptostats.web.openapi import openapi_document
from cryptostats.web.readme import api_section, example_path
from tests.conftest import REPO, ServiceProcess

CONFIG = """
[coins]
ids = ["bitcoin", "ethereum"]
[http]
query_timeout_s = 2.0
"""
EXAMPLES_PER_ROUTE = 50


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def wait_until_answers(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while fetch(url)[0] != 200:
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer 200 within {timeout_s}s")
        time.sleep(0.2)


@contextlib.contextmanager
def fake_gecko_thread() -> Iterator[str]:
    """A fake CoinGecko on its own event loop in a thread; yields its base URL."""
    prices = [60000.0 + 10 * i for i in range(200)]
    fake = FakeCoinGecko.from_prices({"bitcoin": prices, "ethereum": prices[:3]})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
        yield fake.base_url
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m cryptostats` with its embedded servers, fed by the fake
    CoinGecko every 2 seconds, once bitcoin has a stored quote."""
    tmp = tmp_path_factory.mktemp("live")
    (tmp / "config.toml").write_text(CONFIG)
    port = free_port()
    with fake_gecko_thread() as base_url:
        service = ServiceProcess(
            [
                *(
                    "--config",
                    str(tmp / "config.toml"),
                    "--data-dir",
                    str(tmp / "data"),
                ),
                *("--port", str(port), "--schedule", "*/2 * * * * *"),
            ],
            {"COINGECKO_BASE_URL": base_url},
            tmp / "service.log",
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_answers(f"{url}/stats?coin=bitcoin")
            yield url
        finally:
            code = service.stop()
    log = service.log()
    assert code == 0
    assert "Traceback" not in log
    assert '"request_failed"' not in log


def test_every_route_answers_as_its_openapi_document_says(live_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]

    for operation in operations:
        cases = st.one_of(
            operation.as_strategy(),
            operation.as_strategy(GenerationMode.NEGATIVE),
            # Most generated coins are untracked: ask about real ones too.
            operation.as_strategy(query={"coin": "bitcoin"}),
        )

        @given(case=cases)
        @settings(
            max_examples=EXAMPLES_PER_ROUTE,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def answers_as_documented(case: Any) -> None:
            case.call_and_validate()

        answers_as_documented()

    # Loaded from its own URL, schemathesis leaves out GET /openapi.json.
    tested = {op.label for op in operations} | {"GET /openapi.json"}
    assert tested == {f"GET {path}" for path in openapi_document()["paths"]}


def test_the_document_describes_every_route_of_the_app() -> None:
    from cryptostats.actors import ActorContext
    from cryptostats.actors.http_api import HttpApi
    from cryptostats.config import Settings

    api = HttpApi(ActorContext(nats=None, settings=Settings()))  # type: ignore[arg-type]
    # The docs page's assets are not part of the API.
    routes = {path for path in api.routes().paths if not path.startswith("/docs/")}

    assert set(openapi_document()["paths"]) == routes
    assert openapi_document()["openapi"] == "3.1.0"


def _resolved(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "components": document["components"]}


def test_every_example_in_the_document_fits_its_schema() -> None:
    document = openapi_document()
    checked = 0
    for item in document["paths"].values():
        for response in item["get"]["responses"].values():
            for content in response.get("content", {}).values():
                if "example" in content:
                    jsonschema_rs.Draft202012Validator(
                        _resolved(document, content["schema"])
                    ).validate(content["example"])
                    checked += 1
        for param in item["get"].get("parameters", []):
            if "example" in param:
                jsonschema_rs.Draft202012Validator(
                    param["schema"], validate_formats=True
                ).validate(param["example"])

    assert checked >= len(document["paths"])


def test_the_readme_shows_the_documents_examples() -> None:
    readme = (REPO / "README.md").read_text()

    assert api_section() in readme, "run: python -m cryptostats.web.readme README.md"


def test_each_readme_request_gets_the_documented_kind_of_answer(live_url: str) -> None:
    document = openapi_document()
    for path, item in document["paths"].items():
        status, body = fetch(live_url + example_path(path, item["get"]))
        documented = item["get"]["responses"]
        assert str(status) in documented, path
        content = documented[str(status)].get("content", {})
        if "application/json" in content:
            jsonschema_rs.Draft202012Validator(
                _resolved(document, content["application/json"]["schema"])
            ).validate(json.loads(body))


def test_the_docs_page_loads_only_assets_the_service_serves(live_url: str) -> None:
    status, page = fetch(f"{live_url}/docs")
    text = page.decode()
    assets = ["/docs/docs.js", "/docs/docs.css"]

    assert status == 200
    assert "http://" not in text and "https://" not in text
    for asset in assets:
        assert asset in text
        assert fetch(live_url + asset)[0] == 200
    script = fetch(f"{live_url}/docs/docs.js")[1].decode()
    assert 'fetch("/openapi.json")' in script
    assert "http" not in script.replace("http_", "")


def test_unknown_doc_assets_are_a_json_404(live_url: str) -> None:
    status, body = fetch(f"{live_url}/docs/..%2Fconfig.py")

    assert status == 404
    assert json.loads(body)["error"]["code"] == "not_found"
