"""Who a ``USER[:GROUP]`` spec really runs as in a container image, computed the way Docker does it.

Docker (moby's ``getUser``) resolves ``--user`` with runc's ``libcontainer/user.GetExecUser`` against
the image's own ``/etc/passwd`` and ``/etc/group``, with no defaults (uid 0, gid 0), then narrows
each id to 32 bits. Verified on Docker 20.10 / runc 1.1 (``tests/integration/test_user_identity.py``):

* a number is a uid (Go ``strconv.Atoi``: ``00``, ``+0`` and ``-0`` are all 0); anything else is a
  name, looked up in passwd (the first matching line wins); a name that is not found is an error;
* a uid that matches a passwd line takes that line's primary gid; one that does not gets gid **0**;
* an empty user part (``:1000``) means uid 0;
* without an explicit group, every group whose member list names the matched user is added as a
  supplementary group (a member of a gid-0 group gets gid 0); with an explicit group, none is;
* passwd/group numbers are parsed leniently: ``abc`` or a missing field is 0, an out-of-range one is
  clamped, and the id is then cut to 32 bits, so a line ``x:x:4294967296:...`` is uid 0.

``exec_user`` mirrors that exactly, so a host check can deny uid 0 and gid 0 however they are spelled.
Docker's own ``group_add`` only adds groups; it cannot remove the supplementary ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from corral.contract.errors import InvalidRequest

MAX_ID = (1 << 31) - 1
"""runc refuses a numeric uid/gid without an entry above this."""
_INT64 = (-(1 << 63), (1 << 63) - 1)
_DIGITS = re.compile(r"[+-]?[0-9]+")
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" + (
    "\u2028\u2029\u202f\u205f\u3000"
)
"""What Go's ``bytes.TrimSpace`` trims (Python's ``strip()`` trims more)."""


def go_atoi(text: str) -> tuple[int, bool]:
    """Go's ``strconv.Atoi`` on a 64-bit host: (value, ok). A syntax error is (0, False); an
    out-of-range number is its clamped bound with ok False (which runc's file parser keeps)."""
    if not _DIGITS.fullmatch(text):
        return 0, False
    value = int(text)
    if value < _INT64[0]:
        return _INT64[0], False
    if value > _INT64[1]:
        return _INT64[1], False
    return value, True


def is_zero_id(text: str) -> bool:
    """Whether ``text``, as a uid or gid argument, is the number 0 (``0``, ``00``, ``+0``, ``-0``)."""
    value, ok = go_atoi(text)
    return ok and value == 0


def _u32(value: int) -> int:
    return value & 0xFFFFFFFF


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _fields(text: str) -> list[list[str]]:
    """runc's line reader: split on newlines only, trim Go whitespace, skip empty lines, split on ':'."""
    out = []
    for raw in text.split("\n"):
        line = raw.strip(_GO_SPACE)
        if line:
            out.append(line.split(":"))
    return out


def _num(fields: list[str], index: int) -> int:
    return go_atoi(fields[index])[0] if len(fields) > index else 0


@dataclass(frozen=True)
class UserTables:
    """An image's /etc/passwd and /etc/group, every line parsed as runc parses it (junk included:
    runc does not skip a malformed line, it reads its numbers as 0)."""

    passwd: tuple[PasswdEntry, ...] = ()
    group: tuple[GroupEntry, ...] = ()

    @classmethod
    def parse(cls, passwd: str, group: str = "") -> UserTables:
        users = tuple(PasswdEntry(f[0], _num(f, 2), _num(f, 3)) for f in _fields(passwd))
        groups = tuple(
            GroupEntry(f[0], _num(f, 2), tuple(f[3].split(",")) if len(f) > 3 and f[3] else ()) for f in _fields(group)
        )
        return cls(users, groups)


@dataclass(frozen=True)
class ExecUser:
    """The identity a process gets: uid, primary gid, supplementary gids (all 32-bit, as the kernel sees)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = field(default_factory=tuple)

    def root_ids(self) -> list[str]:
        """Which of its ids are 0, named (empty: none)."""
        found = ["uid 0"] if self.uid == 0 else []
        found += ["gid 0"] if self.gid == 0 else []
        return found + (["supplementary gid 0"] if 0 in self.groups else [])


def needs_tables(user: str) -> bool:
    """Whether ``user`` means something different in different images. Only ``UID:GID`` with both
    numeric does not (runc takes the numbers as they are and adds no supplementary group)."""
    parts = user.split(":")
    return len(parts) < 2 or not (go_atoi(parts[0])[1] and go_atoi(parts[1])[1])


def exec_user(user: str, tables: UserTables | None) -> ExecUser:
    """The identity ``user`` gets in an image with ``tables`` (None: the tables could not be read,
    so only a spec that does not depend on them resolves). ``InvalidRequest`` where Docker would
    refuse to start the process (unknown name, id out of range)."""
    parts = user.split(":")
    user_arg, group_arg = parts[0], parts[1] if len(parts) > 1 else ""
    uid_arg, uid_numeric = go_atoi(user_arg)
    gid_arg, gid_numeric = go_atoi(group_arg)
    if tables is None:
        if needs_tables(user):
            raise InvalidRequest(
                "the image's /etc/passwd or /etc/group cannot be read (not a plain file), so only a numeric "
                "UID:GID user can be checked",
                context={"user": user},
            )
        tables = UserTables()
    uid, gid, groups = 0, 0, tuple[int, ...]()
    if user_arg == "":
        users = [u for u in tables.passwd if u.uid == 0]
    elif uid_numeric:
        users = [u for u in tables.passwd if u.uid == uid_arg]
    else:
        users = [u for u in tables.passwd if u.name == user_arg]
    matched = ""
    if users:
        matched, uid, gid = users[0].name, users[0].uid, users[0].gid
    elif user_arg:
        if not uid_numeric:
            raise InvalidRequest(f"user {user_arg!r} is not in the image's /etc/passwd", context={"user": user})
        if not 0 <= uid_arg <= MAX_ID:
            raise InvalidRequest(f"uid {user_arg} is out of range 0-{MAX_ID}", context={"user": user})
        uid = uid_arg
    if group_arg or matched:
        if not group_arg:
            found = [g for g in tables.group if matched in g.members]
        elif gid_numeric:
            found = [g for g in tables.group if g.gid == gid_arg]
        else:
            found = [g for g in tables.group if g.name == group_arg]
        if group_arg:
            if found:
                gid = found[0].gid
            elif not gid_numeric:
                raise InvalidRequest(f"group {group_arg!r} is not in the image's /etc/group", context={"user": user})
            elif not 0 <= gid_arg <= MAX_ID:
                raise InvalidRequest(f"gid {group_arg} is out of range 0-{MAX_ID}", context={"user": user})
            else:
                gid = gid_arg
        else:
            groups = tuple(_u32(g.gid) for g in found)
    return ExecUser(_u32(uid), _u32(gid), groups)
