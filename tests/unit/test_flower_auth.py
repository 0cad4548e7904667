"""``corral dev``'s Flower credentials (``corral.client.devstack.flower_basic_auth``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.client.devstack import FLOWER_USER, flower_basic_auth


def test_generated_once_private_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    first, created = flower_basic_auth(tmp_path / "dev")
    user, _, password = first.partition(":")
    assert created and user == FLOWER_USER and len(password) >= 24
    assert (tmp_path / "dev" / "flower.auth").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "dev").stat().st_mode & 0o777 == 0o700
    assert flower_basic_auth(tmp_path / "dev") == (first, False)  # printed only when created
    other, _ = flower_basic_auth(tmp_path / "elsewhere")
    assert other != first


def test_the_environment_wins_and_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:from-the-vault")
    assert flower_basic_auth(tmp_path / "dev") == ("ops:from-the-vault", False)
    assert not (tmp_path / "dev").exists()
