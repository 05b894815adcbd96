"""The README tells the truth about names a user relies on."""

from __future__ import annotations

from cryptostats import subjects
from tests.conftest import REPO


def test_every_nats_name_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    names = {
        value
        for name, value in vars(subjects).items()
        if name.isupper() and isinstance(value, str) and name != "PREFIX"
    }

    missing = sorted(name for name in names if name not in readme)

    assert missing == []
    assert subjects.price_subject("bitcoin", "usd") in readme


def test_the_readme_shows_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text()

    assert "make run" in readme
    assert "make test" in readme
