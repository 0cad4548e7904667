"""corral.sandbox.secrets.SessionSecrets: secret values kept per session for redaction, so output
frames do not ask the providers again; bounded, re-resolved when the names change, dropped on demand."""

from __future__ import annotations

from collections import Counter

from corral.sandbox.secrets import SecretChain, SessionSecrets


class Counting:
    def __init__(self, values: dict[str, bytes]) -> None:
        self.values = values
        self.asked: Counter[str] = Counter()

    def resolve(self, name: str) -> bytes | None:
        self.asked[name] += 1
        return self.values.get(name)


def test_a_session_is_resolved_once_then_served_from_memory() -> None:
    provider = Counting({"token": b"hunter2"})
    chain = SecretChain([provider])
    cache = SessionSecrets()
    for _ in range(5):
        assert cache.values("s1", (1, 1), lambda: chain.resolve_many(["token"])) == ([b"hunter2"], [])
    assert provider.asked["token"] == 1
    cache.drop("s1")
    cache.values("s1", (1, 1), lambda: chain.resolve_many(["token"]))
    assert provider.asked["token"] == 2


def test_a_new_stamp_resolves_again() -> None:
    provider = Counting({"a": b"x" * 8, "b": b"y" * 8})
    chain = SecretChain([provider])
    cache = SessionSecrets()
    cache.values("s1", (1, 1), lambda: chain.resolve_many(["a"]))
    assert cache.values("s1", (2, 5), lambda: chain.resolve_many(["a", "b"])) == ([b"x" * 8, b"y" * 8], [])
    assert provider.asked == Counter({"a": 2, "b": 1})


def test_an_incomplete_answer_is_not_kept() -> None:
    provider = Counting({})
    chain = SecretChain([provider])
    cache = SessionSecrets()
    for _ in range(3):
        assert cache.values("s1", (1, 1), lambda: chain.resolve_many(["late"])) == ([], ["late"])
    assert provider.asked["late"] == 3
    assert "s1" not in cache
    provider.values["late"] = b"now-known"
    assert cache.values("s1", (1, 1), lambda: chain.resolve_many(["late"])) == ([b"now-known"], [])
    assert "s1" in cache


def test_the_least_recently_read_session_goes_first() -> None:
    cache = SessionSecrets(max_sessions=2)
    for s in ("s1", "s2"):
        cache.values(s, 0, lambda: ([b"v"], []))
    cache.values("s1", 0, lambda: ([b"other"], []))  # a hit: s1 is now the most recent
    cache.values("s3", 0, lambda: ([b"v"], []))
    assert ("s1" in cache, "s2" in cache, "s3" in cache) == (True, False, True)
    assert len(cache) == 2


def test_repr_shows_no_value() -> None:
    cache = SessionSecrets()
    cache.values("s1", 0, lambda: ([b"hunter2"], []))
    assert "hunter2" not in repr(cache) and "1 session" in repr(cache)
