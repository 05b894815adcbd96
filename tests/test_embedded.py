"""Who runs a data dir's embedded servers: the claim, and what others see."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cryptostats import embedded
from cryptostats.errors import DataDirInUseError


def test_a_claimed_data_dir_cannot_be_claimed_again_until_released(
    tmp_path: Path,
) -> None:
    first = embedded.claim_data_dir(tmp_path)
    assert first is not None

    second = embedded.claim_data_dir(tmp_path)
    first.release()
    third = embedded.claim_data_dir(tmp_path)

    assert second is None
    assert third is not None
    third.release()


async def test_others_read_where_the_claimed_servers_listen(tmp_path: Path) -> None:
    claim = embedded.claim_data_dir(tmp_path)
    assert claim is not None
    claim.announce("nats://127.0.0.1:4222", None)

    running = await embedded.running_servers(tmp_path, wait_s=1.0)
    claim.release()

    assert running == embedded.RunningServers(
        os.getpid(), "nats://127.0.0.1:4222", None
    )
    assert not (tmp_path / embedded.SERVERS_FILE).exists()


async def test_servers_left_by_a_killed_owner_are_forgotten_at_the_next_claim(
    tmp_path: Path,
) -> None:
    stale = {"pid": 1, "natsUrl": "nats://127.0.0.1:1", "mongoUri": None}
    (tmp_path / embedded.SERVERS_FILE).write_text(json.dumps(stale))

    claim = embedded.claim_data_dir(tmp_path)
    assert claim is not None
    with pytest.raises(DataDirInUseError, match="has not said") as caught:
        await embedded.running_servers(tmp_path, wait_s=0.3)
    claim.release()

    assert caught.value.pid == os.getpid()


@pytest.mark.parametrize("text", ["{}", "[]", "null", "garbage{", '{"pid": "1"}'])
async def test_a_damaged_servers_file_is_waited_out_not_a_crash(
    tmp_path: Path, text: str
) -> None:
    claim = embedded.claim_data_dir(tmp_path)
    assert claim is not None
    (tmp_path / embedded.SERVERS_FILE).write_text(text)

    with pytest.raises(DataDirInUseError, match=f"process {os.getpid()}"):
        await embedded.running_servers(tmp_path, wait_s=0.3)
    claim.release()
