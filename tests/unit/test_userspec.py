"""Root by name (issue 7, escape 4), the pure half: the user a process gets, resolved as Docker does
it, and the host's ``[users]`` rules on it. The table below is what Docker 20.10 / runc 1.1 really
did with these files (``id`` inside); ``tests/integration/test_user_identity.py`` runs the same table
against the engine, so the mirror cannot drift from Docker unnoticed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from corral.contract.errors import InvalidRequest, PolicyDenial
from corral.contract.models import IsolatedProcessSpec
from corral.host.policy_source import PolicySource
from corral.runtimes import build_runtime
from corral.runtimes.docker.policy import check_sandbox_user
from corral.runtimes.docker.runtime import DockerRuntime
from corral.sandbox.policy import HostPolicy, UserRules, check_user
from corral.sandbox.userspec import ExecUser, UserTables, exec_user, go_atoi, is_zero_id, needs_tables
from corral.settings import HostSettings, Settings

# admin is uid 0 under another name; wheel is gid 0 under another name and lists bob as a member;
# wrap/junk/dup/neg are lines runc reads as uid 0 (32-bit wrap, non-numeric, negative wrap).
PASSWD = """root:x:0:0:root:/root:/bin/sh
admin:x:0:1000:admin:/:/bin/sh
bob:x:1000:1000:bob:/:/bin/sh
carol:x:1001:1001:carol:/:/bin/sh
dave:x:1002:1002:dave:/:/bin/sh
wrap:x:4294967296:4294967296:wrap:/:/bin/sh
junk:x:abc:abc:junk:/:/bin/sh
dup:x:zero:1000
dup:x:1003:1003
neg:x:-4294967296:1000
nobody:x:65534:65534:nobody:/:/bin/false
"""
GROUP = """root:x:0:
wheel:x:0:bob
users:x:1000:
carolg:x:1001:
daveg:x:1002:
extra:x:1500:dave
nogroup:x:65534:
"""
TABLES = UserTables.parse(PASSWD, GROUP)

# user spec -> (uid, gid, supplementary gids) as Docker gave them
RESOLVED: dict[str, tuple[int, int, tuple[int, ...]]] = {
    "admin": (0, 1000, ()),
    "admin:1000": (0, 1000, ()),
    "bob": (1000, 1000, (0,)),  # member of wheel (gid 0)
    "1000": (1000, 1000, (0,)),  # the same user by number
    "bob:1000": (1000, 1000, ()),  # an explicit group: no supplementary group
    "1000:1000": (1000, 1000, ()),
    "1000:wheel": (1000, 0, ()),
    "1000:0": (1000, 0, ()),
    "1000:00": (1000, 0, ()),
    "carol": (1001, 1001, ()),
    "1001": (1001, 1001, ()),
    "dave": (1002, 1002, (1500,)),
    "1234": (1234, 0, ()),  # a uid without a passwd line gets gid 0
    "1234:1234": (1234, 1234, ()),
    "00": (0, 0, ()),
    "0": (0, 0, ()),
    "root": (0, 0, ()),
    "nobody": (65534, 65534, ()),
    "wrap": (0, 0, ()),  # 4294967296 cut to 32 bits
    "4294967296": (0, 0, ()),
    "junk": (0, 0, ()),
    "dup": (0, 1000, ()),  # the first line wins, and runc reads "zero" as 0
    "neg": (0, 1000, ()),
}
SAFE = {user for user, (uid, gid, groups) in RESOLVED.items() if 0 not in (uid, gid, *groups)}


@pytest.mark.parametrize(("text", "expected"), [
    ("0", (0, True)), ("00", (0, True)), ("+0", (0, True)), ("-0", (0, True)), ("1000", (1000, True)),
    ("-12", (-12, True)), ("", (0, False)), (" 0", (0, False)), ("0x0", (0, False)), ("1_0", (0, False)),
    ("\u0661", (0, False)),  # ARABIC-INDIC DIGIT ONE: Python int() takes it, Go does not
    ("9" * 20, ((1 << 63) - 1, False)), ("-" + "9" * 20, (-(1 << 63), False)),
])  # fmt: skip
def test_go_atoi(text: str, expected: tuple[int, bool]) -> None:
    assert go_atoi(text) == expected


def test_zero_however_written() -> None:
    assert all(is_zero_id(t) for t in ("0", "00", "0" * 32, "+0", "-0"))
    assert not any(is_zero_id(t) for t in ("", "root", "10", " 0", "0.0"))


@pytest.mark.parametrize(("user", "expected"), sorted(RESOLVED.items()))
def test_exec_user_matches_docker(user: str, expected: tuple[int, int, tuple[int, ...]]) -> None:
    assert exec_user(user, TABLES) == ExecUser(*expected)


def test_runc_edge_spellings() -> None:
    # not accepted by the request model, but resolved as runc would if they ever got through
    assert exec_user("+0", TABLES) == ExecUser(0, 0, ())
    assert exec_user(":1000", TABLES) == ExecUser(0, 1000, ())  # an empty user part is uid 0
    assert exec_user("bob:1000:ignored", TABLES) == ExecUser(1000, 1000, ())
    assert exec_user("1234", UserTables()) == ExecUser(1234, 0, ())  # no passwd file at all


@pytest.mark.parametrize(
    "user", ["nosuch", "bob:nosuch", "2147483648", "1000:2147483648", "9" * 20, " 0", "nosuch:1000"]
)
def test_what_docker_refuses_is_an_invalid_request(user: str) -> None:
    with pytest.raises(InvalidRequest):
        exec_user(user, TABLES)


def test_unreadable_tables_resolve_only_numeric_user_and_group() -> None:
    assert exec_user("1000:1000", None) == ExecUser(1000, 1000, ())
    assert not needs_tables("1000:1000") and not needs_tables("1:2:x")
    for user in ("1000", "bob", "bob:1000", "1000:users", "root"):
        assert needs_tables(user)
        with pytest.raises(InvalidRequest):
            exec_user(user, None)


def test_parse_keeps_what_runc_keeps() -> None:
    tables = UserTables.parse("  spaced:x:7:8  \r\nshort\n\n#c:x:1:1\n", "g:x:9:a,b\nh:x:10:\n")
    assert [(u.name, u.uid, u.gid) for u in tables.passwd] == [("spaced", 7, 8), ("short", 0, 0), ("#c", 1, 1)]
    assert [(g.name, g.gid, g.members) for g in tables.group] == [("g", 9, ("a", "b")), ("h", 10, ())]


# ------------------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("user", sorted(set(RESOLVED) - SAFE))
def test_root_however_spelled_is_denied(user: str) -> None:
    with pytest.raises(PolicyDenial) as info:
        check_sandbox_user(UserRules(), user, exec_user(user, TABLES))
    assert info.value.context["rule"] == "users.allow_root"
    check_sandbox_user(UserRules(allow_root=True), user, exec_user(user, TABLES))


@pytest.mark.parametrize("user", sorted(SAFE))
def test_non_root_users_pass(user: str) -> None:
    check_sandbox_user(UserRules(), user, exec_user(user, TABLES))


def test_denial_names_the_root_ids() -> None:
    with pytest.raises(PolicyDenial) as info:
        check_sandbox_user(UserRules(), "bob", exec_user("bob", TABLES))
    assert "supplementary gid 0" in info.value.message and "uid 0" not in info.value.message
    assert "bob:GID" in info.value.message  # the way out: an explicit group drops the image's groups
    check_sandbox_user(UserRules(), "bob:users", exec_user("bob:users", TABLES))


def test_allowed_uids_judge_the_resolved_uid() -> None:
    rules = UserRules(allowed_uids=[(1001, 1999)])
    check_sandbox_user(rules, "carol", exec_user("carol", TABLES))  # a name that resolves into the range
    check_sandbox_user(rules, "1002:1002", exec_user("1002:1002", TABLES))
    for user in ("nobody", "2000:2000", "bob:1000"):
        with pytest.raises(PolicyDenial) as info:
            check_sandbox_user(rules, user, exec_user(user, TABLES))
        assert info.value.context["rule"] == "users.allowed"


def test_allowed_users_by_name_still_deny_root() -> None:
    rules = UserRules(allowed_users=["admin", "carol"])
    check_sandbox_user(rules, "carol", exec_user("carol", TABLES))
    with pytest.raises(PolicyDenial) as info:
        check_sandbox_user(rules, "admin", exec_user("admin", TABLES))
    assert info.value.context["rule"] == "users.allow_root"
    with pytest.raises(PolicyDenial):
        check_sandbox_user(rules, "dave", exec_user("dave", TABLES))


# ------------------------------------------------------------------------------ as written (pure)


@pytest.mark.parametrize("user", ["root", "0", "00", "000000", "1000:0", "1000:00", "1000:root", "root:1000"])
def test_pure_check_denies_root_as_written(user: str) -> None:
    with pytest.raises(PolicyDenial) as info:
        check_user(HostPolicy(), user)
    assert info.value.context["rule"] == "users.allow_root"
    check_user(HostPolicy(users=UserRules(allow_root=True)), user)


def test_pure_check_defers_names_to_the_image_when_uids_are_listed() -> None:
    ranged = HostPolicy(users=UserRules(allowed_uids=[(1000, 1999)]))
    check_user(ranged, "carol")  # judged on its resolved uid by the runtime
    check_user(ranged, "1500")
    with pytest.raises(PolicyDenial):
        check_user(ranged, "2000")
    named = HostPolicy(users=UserRules(allowed_users=["carol"]))
    check_user(named, "carol")
    with pytest.raises(PolicyDenial):
        check_user(named, "dave")


@pytest.mark.parametrize("user", ["+0", "-0", " 0", "0 ", ":1000", ":0", "root:", "a b", "1000:+0"])
def test_the_request_model_refuses_odd_spellings(user: str) -> None:
    with pytest.raises(ValidationError):
        IsolatedProcessSpec(process_id="p", argv=["true"], user=user)


def test_the_docker_runtime_judges_users_by_the_coordinators_policy(tmp_path: Path) -> None:
    """``services.coordinator`` hands ``PolicySource.current`` to the runtime: one policy, two checks."""
    source = PolicySource.fixed(HostPolicy(users=UserRules(allow_root=True)))
    settings = Settings(host=HostSettings(id="edge-1", runtime="docker", state_dir=str(tmp_path)))
    runtime = build_runtime(settings, source.current)
    assert isinstance(runtime, DockerRuntime) and runtime.policy().users.allow_root
    assert not DockerRuntime("edge-1", settings.host).policy().users.allow_root  # the documented default
