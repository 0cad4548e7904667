"""How the seed's serde attributes become pydantic: the base model, ids, omission, external tagging.

The upstream crate's ``#[serde]`` attributes are the wire specification (``tests/wire_corpus/SPEC.md``
spells every type out). Four rules carry over to every model of ``corral.contract``:

- ``Model``: frozen, ``extra="forbid"``, keys named exactly as upstream's fields. A plain
  ``Option<T>`` is ``T | None = None`` and dumps as ``null``; one with
  ``skip_serializing_if = "Option::is_none"`` is ``= omit_none()`` and its key is left out when None;
  a ``Vec`` with ``skip_serializing_if = "Vec::is_empty"`` is ``= omit_empty()``; a corral extension
  with a default is ``= omit_default(value)``, absent while it holds it.
- ``Id``: upstream's ``#[serde(transparent)]`` id newtypes are bare strings, validated as upstream
  does (non-empty, at most 512 UTF-8 bytes, no ``Cc`` control character).
- ``Tagged``: an externally tagged enum with data (``"disabled"`` or ``{"allowlist": {"hosts": []}}``)
  is one model with a ``kind`` field and the union of its variants' fields; it validates and dumps
  the external form, and refuses fields that do not belong to its variant.
- Integers are strict: ``1.0`` is not a ``u64``; unsigned ranges are checked (``U16``, ``U32``, ``U64``).

corral's own extensions are optional fields beside upstream's, omitted when unset, so upstream (which
ignores unknown keys) decodes every document corral sends, and an upstream document round-trips.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, TypeVar, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    model_serializer,
    model_validator,
)

MAX_ID_BYTES = 512


def check_id(value: str) -> str:
    """Upstream's ``validate_identifier``: the rule every id newtype enforces on decode."""
    if not value:
        raise ValueError("identifier is empty")
    size = len(value.encode("utf-8"))
    if size > MAX_ID_BYTES:
        raise ValueError(f"identifier length {size} exceeds max {MAX_ID_BYTES}")
    for index, ch in enumerate(value):
        if unicodedata.category(ch) == "Cc":
            raise ValueError(f"identifier contains control character at index {index}")
    return value


Id = Annotated[str, AfterValidator(check_id)]
"""A transparent id newtype: a bare, validated JSON string."""

U16 = Annotated[int, Strict(), Field(ge=0, le=0xFFFF)]
U32 = Annotated[int, Strict(), Field(ge=0, le=0xFFFF_FFFF)]
U64 = Annotated[int, Strict(), Field(ge=0, le=0xFFFF_FFFF_FFFF_FFFF)]
I32 = Annotated[int, Strict(), Field(ge=-(1 << 31), le=(1 << 31) - 1)]


def _is_none(value: object) -> bool:
    return value is None


def _is_empty(value: object) -> bool:
    return not value


def omit_none(**kwargs: Any) -> Any:
    """``Option<T>`` with ``skip_serializing_if = "Option::is_none"``: absent when None."""
    return Field(default=None, exclude_if=_is_none, **kwargs)


def omit_empty(factory: Callable[[], Any] = list, **kwargs: Any) -> Any:
    """``Vec<T>``/``BTreeSet<T>`` with ``default, skip_serializing_if = "…::is_empty"`` (and corral's
    own maps, ``factory=dict``): absent when empty."""
    return Field(default_factory=factory, exclude_if=_is_empty, **kwargs)


def omit_default(default: Any) -> Any:
    """A corral extension with a default: the key is left out while it holds the default."""
    return Field(default=default, exclude_if=lambda value: value == default)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


NEWTYPE = "__value__"
"""In ``Tagged.VARIANTS``: the variant is a newtype (``{"region": "eu"}``), its value in this field."""


class Tagged(Model):
    """An externally tagged serde enum. Subclasses declare ``kind`` (a StrEnum of the variant names)
    and ``VARIANTS``: variant name → the fields of its payload (``()`` for a unit variant, dumped as
    the bare string; ``(NEWTYPE, field)`` for a newtype variant, dumped as ``{variant: value}``)."""

    VARIANTS: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    """Payload fields that may be absent on the wire (corral's extensions)."""
    kind: Any
    """The variant's name (subclasses narrow it to their StrEnum)."""

    @model_validator(mode="before")
    @classmethod
    def _from_external(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"kind": data}
        if isinstance(data, BaseModel):
            return data
        if isinstance(data, dict) and "kind" not in data and len(data) == 1:
            ((tag, payload),) = data.items()
            fields = cls.VARIANTS.get(tag)
            if fields is None:
                raise ValueError(f"unknown variant {tag!r}")
            if fields[:1] == (NEWTYPE,):
                return {"kind": tag, fields[1]: payload}
            if payload is None and not fields:
                return {"kind": tag}
            if not isinstance(payload, dict):
                raise ValueError(f"variant {tag!r} carries an object")
            unknown = set(payload) - set(fields)
            if unknown:
                raise ValueError(f"variant {tag!r} has no field {sorted(unknown)[0]!r}")
            missing = [name for name in fields if name not in payload and name not in cls.OPTIONAL]
            if missing:  # serde: every field of a struct variant is required
                raise ValueError(f"variant {tag!r} is missing field {missing[0]!r}")
            return {"kind": tag, **payload}
        return data

    @model_validator(mode="after")
    def _fields_of_variant(self) -> Tagged:
        own = set(self._payload_fields())
        for name, field in type(self).model_fields.items():
            if name == "kind" or name in own or name not in self.model_fields_set:
                continue
            if getattr(self, name) != field.get_default(call_default_factory=True):
                raise ValueError(f"{name!r} does not belong to variant {self._tag()!r}")
        return self

    def _tag(self) -> str:
        return str(self.kind.value if hasattr(self.kind, "value") else self.kind)

    def _payload_fields(self) -> tuple[str, ...]:
        fields = type(self).VARIANTS.get(self._tag(), ())
        return fields[1:] if fields[:1] == (NEWTYPE,) else fields

    @model_serializer(mode="wrap")
    def _to_external(self, handler: Any) -> Any:
        flat = handler(self)
        tag = self._tag()
        fields = type(self).VARIANTS.get(tag, ())
        if not fields:
            return tag
        if fields[:1] == (NEWTYPE,):
            return {tag: flat.get(fields[1])}
        return {tag: {name: flat[name] for name in fields if name in flat}}


Result = BaseModel | str
R = TypeVar("R", bound=BaseModel | str)
"""What an operation answers: a model, or a bare string where upstream's result is a transparent ref."""


WireResult = dict[str, Any] | str
"""A result as it crosses Celery."""


def to_wire(value: Result) -> WireResult:
    """The JSON-safe form of an operation's result (a transparent ref is the string itself)."""
    return value if isinstance(value, str) else value.model_dump(mode="json")


def to_json(value: Result) -> str:
    return json.dumps(value) if isinstance(value, str) else value.model_dump_json()


@functools.cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def from_wire(kind: type[R], data: Any) -> R:
    """Validate a result of ``kind`` (a model class, or ``str`` for a transparent ref)."""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return cast(R, kind.model_validate(data))
    return cast(R, _adapter(kind).validate_python(data))


def from_json(kind: type[R], text: str | bytes) -> R:
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return cast(R, kind.model_validate_json(text))
    return cast(R, _adapter(kind).validate_json(text))
