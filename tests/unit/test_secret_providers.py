"""Secret providers: the chain, the built-ins, and plug-ins loaded by import path from host settings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from corral.contract.errors import HostConfigurationNeeded, InvalidRequest, NotFound
from corral.sandbox.secrets import (
    DEFAULT_PROVIDERS,
    DirectoryProvider,
    EnvironmentProvider,
    SecretChain,
    SecretProvider,
    load_provider,
)
from corral.settings import HostSettings, Settings

HERE = __name__
VAULT = {"vault-token": b"from-the-vault", "shared": b"vault-wins"}


class VaultProvider:
    """A plug-in built from the host settings (``from_settings``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.calls: list[str] = []

    @classmethod
    def from_settings(cls, host: HostSettings) -> VaultProvider:
        return cls(prefix=host.id)

    def resolve(self, name: str) -> bytes | None:
        self.calls.append(name)
        return VAULT.get(name)


class NoArgProvider:
    """A plug-in class built with no argument."""

    def resolve(self, name: str) -> bytes | None:
        return b"no-arg" if name == "no-arg" else None


def make_provider() -> SecretProvider:
    """A plug-in factory function."""
    return NoArgProvider()


class _Instance:
    def resolve(self, name: str) -> bytes | None:
        return b"instance" if name == "instance" else None


INSTANCE = _Instance()
"""A plug-in that is already a provider object."""


class TextProvider:
    def resolve(self, name: str) -> str | None:
        return "t\u00e9xt" if name == "text" else None


class WrongTypeProvider:
    def resolve(self, name: str) -> object:
        return 42


class LeakyProvider:
    """Fails with an exception whose text quotes a value: it must never surface."""

    def resolve(self, name: str) -> bytes | None:
        raise RuntimeError("backend said: the value is hunter2-LEAK")


class DenyingProvider:
    def resolve(self, name: str) -> bytes | None:
        raise NotFound("not for this host", context={"secret": name})


class NotAProvider:
    pass


class ExplodingFactory:
    @classmethod
    def from_settings(cls, host: HostSettings) -> ExplodingFactory:
        raise ValueError("config for hunter2-LEAK missing")


@pytest.fixture
def host(tmp_path: Path) -> HostSettings:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "db").write_bytes(b"from-dir\n")
    (tmp_path / "secrets" / "shared").write_bytes(b"dir-value")
    return HostSettings(id="edge-1", secrets_dir=str(tmp_path / "secrets"))


# ------------------------------------------------------------------------------------- built-ins


def test_builtins_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(DirectoryProvider(tmp_path), SecretProvider)
    assert isinstance(EnvironmentProvider({}), SecretProvider)
    assert isinstance(VaultProvider("x"), SecretProvider)
    assert not isinstance(NotAProvider(), SecretProvider)


def test_directory_provider_returns_exact_bytes_or_none(host: HostSettings) -> None:
    provider = DirectoryProvider(host.secrets_dir)
    assert provider.resolve("db") == b"from-dir\n"
    assert provider.resolve("missing") is None
    assert DirectoryProvider("/nonexistent/dir").resolve("db") is None
    assert DirectoryProvider().directory == Path("/etc/corral/secrets")


def test_directory_provider_ignores_subdirectories(host: HostSettings) -> None:
    (Path(host.secrets_dir) / "adir").mkdir()
    assert DirectoryProvider(host.secrets_dir).resolve("adir") is None


def test_directory_provider_unreadable_is_not_found(host: HostSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(self: Path) -> bytes:
        raise PermissionError(13, "denied")

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(NotFound) as info:
        DirectoryProvider(host.secrets_dir).resolve("db")
    assert info.value.context == {"secret": "db"}


def test_environment_provider_maps_names_and_prefix() -> None:
    provider = EnvironmentProvider({"CORRAL_SECRET_DB_PASSWORD": "pw", "APP_DB_PASSWORD": "other"})
    assert provider.resolve("db.password") == b"pw"
    assert provider.resolve("db-password") == b"pw"
    assert provider.resolve("nope") is None
    assert EnvironmentProvider({"APP_DB_PASSWORD": "other"}, prefix="APP_").resolve("db-password") == b"other"


def test_environment_provider_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_SECRET_LIVE", "now")
    assert EnvironmentProvider().resolve("live") == b"now"


@pytest.mark.parametrize("name", ["../etc/passwd", ".hidden", "a/b", "", "x" * 200, "a\nb"])
def test_every_provider_refuses_traversal(host: HostSettings, name: str) -> None:
    for provider in (DirectoryProvider(host.secrets_dir), EnvironmentProvider({})):
        with pytest.raises(InvalidRequest):
            provider.resolve(name)
    with pytest.raises(InvalidRequest):
        SecretChain([VaultProvider("x")]).resolve(name)


# ------------------------------------------------------------------------------------- the chain


def test_chain_asks_in_order_and_first_wins(host: HostSettings) -> None:
    vault = VaultProvider("x")
    chain = SecretChain([DirectoryProvider(host.secrets_dir), vault])
    assert chain.resolve("shared") == b"dir-value"
    assert vault.calls == []  # never asked when an earlier provider knows the name
    assert chain.resolve("vault-token") == b"from-the-vault"
    assert SecretChain([vault, DirectoryProvider(host.secrets_dir)]).resolve("shared") == b"vault-wins"


def test_chain_unknown_secret_is_not_found_naming_only_the_secret(host: HostSettings) -> None:
    with pytest.raises(NotFound) as info:
        SecretChain.from_settings(host).resolve("nowhere")
    assert info.value.context == {"secret": "nowhere"}
    assert "nowhere" not in info.value.message


def test_empty_chain_knows_nothing() -> None:
    with pytest.raises(NotFound):
        SecretChain([]).resolve("x")


def test_chain_provider_errors_never_carry_the_exception_text(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(HostConfigurationNeeded) as info:
        SecretChain([LeakyProvider()]).resolve("x")
    assert "hunter2" not in repr(info.value.args) and "hunter2" not in str(info.value.__cause__)
    assert info.value.context == {"secret": "x", "provider": f"{HERE}:LeakyProvider"}
    assert info.value.__suppress_context__
    assert "hunter2" not in caplog.text


def test_chain_passes_agent_errors_through() -> None:
    with pytest.raises(NotFound) as info:
        SecretChain([DenyingProvider(), NoArgProvider()]).resolve("no-arg")
    assert info.value.message == "not for this host"


def test_chain_accepts_text_and_rejects_other_types() -> None:
    assert SecretChain([TextProvider()]).resolve("text") == "t\u00e9xt".encode()
    with pytest.raises(HostConfigurationNeeded):
        SecretChain([WrongTypeProvider()]).resolve("x")


def test_resolve_many_splits_found_and_missing(host: HostSettings) -> None:
    chain = SecretChain([DirectoryProvider(host.secrets_dir), LeakyProvider()])
    assert chain.resolve_many(["db", "other", "../x"]) == ([b"from-dir\n"], ["other", "../x"])


def test_default_chain_is_directory_then_environment(host: HostSettings) -> None:
    chain = SecretChain.default(host.secrets_dir, environ={"CORRAL_SECRET_DB": "env", "CORRAL_SECRET_ONLY": "o"})
    assert chain.resolve("db") == b"from-dir\n" and chain.resolve("only") == b"o"
    assert chain.describe() == [
        "corral.sandbox.secrets:DirectoryProvider",
        "corral.sandbox.secrets:EnvironmentProvider",
    ]


# ------------------------------------------------------------------------------------- plug-ins


def test_settings_default_to_the_builtins(host: HostSettings) -> None:
    assert tuple(HostSettings().secret_providers) == DEFAULT_PROVIDERS
    chain = SecretChain.from_settings(host)
    assert [type(p) for p in chain.providers] == [DirectoryProvider, EnvironmentProvider]
    assert chain.providers[0].directory == Path(host.secrets_dir)  # type: ignore[attr-defined]


def test_plugins_are_loaded_by_import_path(host: HostSettings) -> None:
    configured = host.model_copy(
        update={
            "secret_providers": [
                f"{HERE}:VaultProvider",
                "corral.sandbox.secrets:DirectoryProvider",
                f"{HERE}:NoArgProvider",
                f"{HERE}:make_provider",
                f"{HERE}:INSTANCE",
            ]
        }
    )
    chain = SecretChain.from_settings(configured)
    vault = chain.providers[0]
    assert isinstance(vault, VaultProvider) and vault.prefix == "edge-1"  # built from the host settings
    assert chain.providers[4] is INSTANCE
    assert chain.resolve("shared") == b"vault-wins"
    assert chain.resolve("db") == b"from-dir\n"
    assert chain.resolve("no-arg") == b"no-arg" and chain.resolve("instance") == b"instance"
    with pytest.raises(NotFound):
        chain.resolve("unknown")


def test_plugins_named_in_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CORRAL_HOST__SECRET_PROVIDERS", f'["{HERE}:VaultProvider"]')
    monkeypatch.setenv("CORRAL_CONFIG", str(tmp_path / "corral.toml"))
    (tmp_path / "corral.toml").write_text("")
    settings = Settings()
    assert settings.host.secret_providers == [f"{HERE}:VaultProvider"]
    assert SecretChain.from_settings(settings.host).resolve("vault-token") == b"from-the-vault"


@pytest.mark.parametrize(
    "path",
    [
        "no_colon",
        "mod:",
        ":Attr",
        "bad path:X",
        "os:system;rm",
        "corral.nope_module:X",
        "corral.sandbox.secrets:NoSuchThing",
        f"{HERE}:NotAProvider",
        f"{HERE}:ExplodingFactory",
        f"{HERE}:VAULT",
    ],
)
def test_bad_plugins_are_host_configuration_errors(host: HostSettings, path: str) -> None:
    with pytest.raises(HostConfigurationNeeded) as info:
        load_provider(path, host)
    assert "hunter2" not in repr(info.value.args)
    assert info.value.context["provider"] == path[:200]


def test_a_bad_plugin_fails_the_whole_chain(host: HostSettings) -> None:
    broken = host.model_copy(update={"secret_providers": ["corral.sandbox.secrets:DirectoryProvider", "nope.nope:X"]})
    with pytest.raises(HostConfigurationNeeded):
        SecretChain.from_settings(broken)


def test_plugins_are_imported_lazily_by_the_runtime(host: HostSettings) -> None:
    """Building a runtime imports no plug-in; the first secret lookup does (on the worker)."""
    from corral.runtimes.docker.runtime import DockerRuntime

    broken = host.model_copy(update={"secret_providers": ["nope.nope:X"]})
    runtime = DockerRuntime("edge-1", broken, client=object())
    with pytest.raises(HostConfigurationNeeded):
        runtime.secrets.resolve("db")
