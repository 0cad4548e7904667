"""The host secret provider and basic redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.contract.errors import InvalidRequest, NotFound
from corral.sandbox.redact import redact, redact_text
from corral.sandbox.secrets import SecretChain, env_key, resolve


def test_env_key_mapping() -> None:
    assert env_key("api-token") == "CORRAL_SECRET_API_TOKEN"
    assert env_key("db.password") == "CORRAL_SECRET_DB_PASSWORD"


def test_file_wins_over_env(tmp_path: Path) -> None:
    (tmp_path / "api-token").write_bytes(b"from-file\n")
    provider = SecretChain.default(tmp_path, environ={"CORRAL_SECRET_API_TOKEN": "from-env"})
    assert provider.resolve("api-token") == b"from-file\n"


def test_env_fallback(tmp_path: Path) -> None:
    provider = SecretChain.default(tmp_path / "missing-dir", environ={"CORRAL_SECRET_DB_PASSWORD": "hunter2"})
    assert provider.resolve("db.password") == b"hunter2"


def test_process_environment_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_SECRET_TOKEN", "env-value")
    assert resolve("token", secrets_dir=tmp_path) == b"env-value"


def test_unknown_secret_names_only_the_name(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        SecretChain.default(tmp_path, environ={}).resolve("nope")
    assert info.value.context == {"secret": "nope"}


@pytest.mark.parametrize("name", ["../etc/passwd", ".hidden", "a/b", "", "x" * 200])
def test_names_cannot_traverse(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidRequest):
        SecretChain.default(tmp_path, environ={}).resolve(name)


def test_resolve_many_splits_found_and_missing(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"A")
    values, missing = SecretChain.default(tmp_path, environ={}).resolve_many(["a", "b"])
    assert (values, missing) == ([b"A"], ["b"])


def test_redact_counts_every_occurrence() -> None:
    assert redact(b"x=sekrit y=sekrit", [b"sekrit"]) == (b"x=[REDACTED] y=[REDACTED]", 2)


def test_redact_prefers_the_longest_value() -> None:
    assert redact(b"abcdef abc", [b"abc", b"abcdef"]) == (b"[REDACTED] [REDACTED]", 2)


def test_redact_ignores_empty_values_and_data() -> None:
    assert redact(b"data", [b""]) == (b"data", 0)
    assert redact(b"", [b"x"]) == (b"", 0)


def test_redact_text() -> None:
    assert redact_text("token hunter2 leaked", [b"hunter2"]) == "token [REDACTED] leaked"
