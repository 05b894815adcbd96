"""`make demo` as a user runs it: twice, in the same data dir."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from cryptostats import embedded
from tests.conftest import REPO

DAY_RE = re.compile(r"^  bitcoin\s+(\d{4}-\d{2}-\d{2})\s+price", re.MULTILINE)


def run_demo(data_dir: Path) -> tuple[int, list[str]]:
    """Run the demo for a few seconds; its exit code and the bitcoin days shown."""
    command = [
        sys.executable, "-m", "cryptostats.demo",
        "--seconds", "7", "--every", "1",
        "--port", str(embedded.free_port()),
        "--data-dir", str(data_dir),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=90, check=False
    )

    return done.returncode, DAY_RE.findall(done.stdout)


def test_a_second_demo_replays_from_the_start_again(tmp_path: Path) -> None:
    first_code, first = run_demo(tmp_path / "demo")

    second_code, second = run_demo(tmp_path / "demo")

    assert (first_code, second_code) == (0, 0)
    assert len(first) >= 2 and first == sorted(set(first))
    assert len(second) >= 2 and second == sorted(set(second))
    assert second[0] < first[-1]


def test_the_demo_refuses_a_data_dir_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("not a demo's")

    code, days = run_demo(tmp_path)

    assert code != 0
    assert days == []
    assert (tmp_path / "precious.txt").exists()


def test_sigterm_stops_the_demo_and_its_service(tmp_path: Path) -> None:
    port = embedded.free_port()
    command = [
        sys.executable, "-m", "cryptostats.demo", "--seconds", "0",
        "--port", str(port), "--data-dir", str(tmp_path / "demo"),
    ]  # fmt: skip
    demo = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert demo.stdout is not None
    for line in demo.stdout:
        if line.startswith("service ready"):
            break

    demo.send_signal(signal.SIGTERM)
    rest = demo.communicate(timeout=30)[0]

    assert "service stopped (exit code 0)" in rest
    assert not (tmp_path / "demo" / embedded.SERVERS_FILE).exists()
