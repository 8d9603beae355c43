"""Typed run configs: one dataclass per kind of run, one validator, JSON schemas generated from them.

A run config is a frozen dataclass, subclass of :class:`RunConfig`, whose fields are declared with
:func:`option` (a default, or none for a required key; a doc string; bounds). From the dataclass come

* :meth:`RunConfig.from_dict`, the one validator: fills defaults, rejects unknown keys, checks
  types and bounds, then the cross-field rules (:class:`Check`) the class declares; every problem
  is a one-line ``ValueError`` naming the key;
* :func:`property_schema` / :func:`properties_schema`: the JSON schema (draft 2020-12) of its keys,
  written into config.schema.yaml by :mod:`mechflow.run_schemas`.

Supported field types: ``int`` (integral floats accepted, as in JSON schema), ``float`` (finite;
ints accepted, stored as float), ``str``, ``bool``, ``Literal[...]`` (an enum), ``X | None`` and
tuples (``tuple[float, float]``, ``tuple[float, ...]``: lists in a run dict, bounds apply to each item).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, ClassVar, Literal, Self

#: bounds an :func:`option` may declare, and their JSON-schema names
BOUNDS = {"minimum": "minimum", "exclusive_minimum": "exclusiveMinimum", "maximum": "maximum",
          "exclusive_maximum": "exclusiveMaximum"}
_BOUND_TEXT = {"minimum": ">=", "exclusive_minimum": ">", "maximum": "<=", "exclusive_maximum": "<"}


def option(
    default: Any = MISSING,
    doc: str = "",
    *,
    minimum: float | None = None,
    exclusive_minimum: float | None = None,
    maximum: float | None = None,
    exclusive_maximum: float | None = None,
    pattern: str | None = None,
    min_items: int | None = None,
) -> Any:
    """A run-config field: its default (omit for a required key), what it means, and its bounds.

    Numeric bounds apply to the value, or to each item of a tuple; ``pattern`` (a regular
    expression, searched as JSON schema does) to strings; ``min_items`` to variadic tuples (default 1).
    """
    meta: dict[str, Any] = {"doc": " ".join(doc.split())}
    for key, value in (("minimum", minimum), ("exclusive_minimum", exclusive_minimum), ("maximum", maximum),
                       ("exclusive_maximum", exclusive_maximum), ("pattern", pattern), ("min_items", min_items)):
        if value is not None:
            meta[key] = value
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Check:
    """A cross-field rule of a run config.

    key: the key an error names; rule: the rule in words (docs, schema description); holds(config)
    -> bool; message: format string over the config's fields; applies(config class) -> bool limits
    the rule to some subclasses (e.g. architectures that use ``k``); schema: the same rule as a
    JSON-schema fragment where JSON schema can express it (added to the generated ``allOf``).
    """

    key: str
    rule: str
    holds: Callable[[Any], bool]
    message: str
    applies: Callable[[type], bool] = lambda cls: True
    schema: Mapping[str, Any] | None = None


class RunConfig:
    """Base of the run-config dataclasses (subclasses are ``@dataclass(frozen=True, kw_only=True)``)."""

    #: how errors name a run of this kind
    LABEL: ClassVar[str] = "run"
    #: the error class raised by :meth:`from_dict`
    ERROR: ClassVar[type[ValueError]] = ValueError
    #: cross-field rules, checked after every key passed
    CHECKS: ClassVar[tuple[Check, ...]] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, label: str | None = None,
                  hint: Callable[[str], str | None] | None = None) -> Self:
        """Validate a run dict into an instance: defaults filled, types coerced (ints to float where a
        float is declared, lists to tuples). ``hint(key)`` may explain an unknown key."""
        label = label or cls.LABEL
        if not isinstance(data, Mapping):
            raise cls.ERROR(f"a {label} must be a mapping of keys to values, got {type(data).__name__}")
        known = {f.name: f for f in config_fields(cls)}
        unknown = [key for key in data if key not in known]
        if unknown:
            hints = "; ".join((hint(str(k)) if hint else None) or f"{k!r} is not a known key" for k in unknown)
            raise cls.ERROR(f"{label} has unexpected keys: {hints}. Known keys: {sorted(known)}")
        types_ = field_types(cls)
        values: dict[str, Any] = {}
        for name, f in known.items():
            if name in data:
                values[name] = check_value(types_[name], f.metadata, data[name], f"{label} key {name!r}", cls.ERROR)
            elif f.default is not MISSING:
                values[name] = f.default
            else:
                doc = f.metadata.get("doc", "")
                raise cls.ERROR(f"{label} key {name!r} is required" + (f" ({doc})" if doc else ""))
        config = cls(**values)
        for check in cls.CHECKS:
            if check.applies(cls) and not check.holds(config):
                raise cls.ERROR(f"{label} key {check.key!r}: {check.message.format(**values)}")
        return config

    def to_dict(self) -> dict[str, Any]:
        """The complete run as plain data (tuples as lists), keys in field order."""
        return {f.name: _plain(getattr(self, f.name)) for f in config_fields(type(self))}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Default of every key that has one, as plain data."""
        return {f.name: _plain(f.default) for f in config_fields(cls) if f.default is not MISSING}

    @classmethod
    def docs(cls) -> dict[str, str]:
        """What each key means."""
        return {f.name: f.metadata.get("doc", "") for f in config_fields(cls)}


def config_fields(cls: type) -> tuple[dataclasses.Field, ...]:
    """The fields of a run-config dataclass, in declaration order."""
    return dataclasses.fields(cls)


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved type of every field."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in config_fields(cls)}


def check_field(cls: type[RunConfig], name: str, value: Any, label: str | None = None) -> Any:
    """Check one key of ``cls`` alone (type and bounds); returns the coerced value."""
    f = {f.name: f for f in config_fields(cls)}[name]
    return check_value(field_types(cls)[name], f.metadata, value, f"{label or cls.LABEL} key {name!r}", cls.ERROR)


# ---- types ----------------------------------------------------------------------------------------

def _split_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported run-config type {tp!r}")
        return args[0], True
    return tp, False


def _items(tp: Any) -> tuple[list[Any], bool] | None:
    """Item types of a tuple type and whether it is variadic; None for other types."""
    if typing.get_origin(tp) is not tuple:
        return None
    args = list(typing.get_args(tp))
    if len(args) == 2 and args[1] is Ellipsis:
        return [args[0]], True
    return args, False


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _scalar(tp: Any, v: Any) -> tuple[bool, Any]:
    """(ok, coerced) for a scalar type."""
    if typing.get_origin(tp) is Literal:
        return (isinstance(v, str) and v in typing.get_args(tp)), v
    if tp is bool:
        return isinstance(v, bool), v
    if tp is int:  # as in JSON schema, a number with a zero fractional part is an integer (2.0 -> 2)
        ok = _is_int(v) or (_is_number(v) and float(v).is_integer())
        return ok, int(v) if ok else v
    if tp is float:
        ok = _is_number(v) and math.isfinite(float(v))
        return ok, float(v) if ok else v
    if tp is str:
        return isinstance(v, str), v
    raise TypeError(f"unsupported run-config type {tp!r}")


def _in_bounds(meta: Mapping[str, Any], v: Any) -> bool:
    if "pattern" in meta and isinstance(v, str) and not re.search(meta["pattern"], v):
        return False
    if not _is_number(v):
        return True
    tests = {"minimum": v >= meta.get("minimum", -math.inf), "exclusive_minimum": v > meta.get("exclusive_minimum", -math.inf),
             "maximum": v <= meta.get("maximum", math.inf), "exclusive_maximum": v < meta.get("exclusive_maximum", math.inf)}
    return all(tests.values())


def _scalar_text(tp: Any, meta: Mapping[str, Any], plural: bool = False) -> str:
    if typing.get_origin(tp) is Literal:
        return f"one of {list(typing.get_args(tp))}"
    noun = {int: "integer", float: "number", str: "string", bool: "boolean"}[tp]
    text = f"{noun}s" if plural else f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"
    bounds = [f"{_BOUND_TEXT[k]} {meta[k]:g}" for k in BOUNDS if k in meta]
    if bounds:
        text += " " + " and ".join(bounds)
    if "pattern" in meta:
        text += f" matching {meta['pattern']!r}"
    return text


def expected_text(tp: Any, meta: Mapping[str, Any]) -> str:
    """What a key of type ``tp`` with bounds ``meta`` must be, in words."""
    inner, nullable = _split_optional(tp)
    items = _items(inner)
    if items is None:
        text = _scalar_text(inner, meta)
    elif items[1]:
        n = meta.get("min_items", 1)
        items_text = _scalar_text(items[0][0], meta, plural=True)
        text = f"a non-empty list of {items_text}" if n == 1 else f"a list of at least {n} {items_text}"
    else:
        kinds = {_scalar_text(t, meta, plural=True) for t in items[0]}
        text = f"a list of {len(items[0])} {kinds.pop()}" if len(kinds) == 1 else f"a list of {len(items[0])} items"
    return text + (" or null" if nullable else "")


def check_value(tp: Any, meta: Mapping[str, Any], v: Any, what: str, error: type[ValueError] = ValueError) -> Any:
    """Check ``v`` against a field type and its bounds; returns the coerced value or raises ``error``
    with the one-line message ``"{what} must be ..., got ..."``."""
    inner, nullable = _split_optional(tp)
    if v is None and nullable:
        return None
    items = _items(inner)
    if items is None:
        ok, out = _scalar(inner, v)
        ok = ok and _in_bounds(meta, out)
    else:
        item_types, variadic = items
        ok = isinstance(v, (list, tuple))
        if ok:
            n = len(v)
            ok = n >= meta.get("min_items", 1) if variadic else n == len(item_types)
        out = v
        if ok:
            coerced = []
            for i, item in enumerate(v):
                good, c = _scalar(item_types[0] if variadic else item_types[i], item)
                ok = ok and good and _in_bounds(meta, c)
                coerced.append(c)
            out = tuple(coerced)
    if not ok:
        raise error(f"{what} must be {expected_text(tp, meta)}, got {v!r}")
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


# ---- JSON schema ----------------------------------------------------------------------------------

def _scalar_schema(tp: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    if typing.get_origin(tp) is Literal:
        return {"enum": list(typing.get_args(tp))}
    out: dict[str, Any] = {"type": {int: "integer", float: "number", str: "string", bool: "boolean"}[tp]}
    for key, name in BOUNDS.items():
        if key in meta and tp in (int, float):
            out[name] = meta[key]
    if "pattern" in meta and tp is str:
        out["pattern"] = meta["pattern"]
    return out


def property_schema(tp: Any, meta: Mapping[str, Any], default: Any = MISSING) -> dict[str, Any]:
    """JSON schema of one field: type, bounds, ``default`` (when given) and ``description``."""
    inner, nullable = _split_optional(tp)
    items = _items(inner)
    if items is None:
        out = _scalar_schema(inner, meta)
    else:
        item_types, variadic = items
        out = {"type": "array"}
        if variadic:
            out["minItems"] = meta.get("min_items", 1)
        else:
            out["minItems"] = out["maxItems"] = len(item_types)
        out["items"] = _scalar_schema(item_types[0], meta)
    if nullable:
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        else:
            out["type"] = [out["type"], "null"]
    if default is not MISSING:
        out["default"] = _plain(default)
    if meta.get("doc"):
        out["description"] = meta["doc"]
    return out


def properties_schema(cls: type, names: Sequence[str] | None = None, defaults: bool = True) -> dict[str, Any]:
    """``properties`` of the named fields of ``cls`` (all by default)."""
    fs = {f.name: f for f in config_fields(cls)}
    hints = field_types(cls)
    return {name: property_schema(hints[name], fs[name].metadata, fs[name].default if defaults else MISSING)
            for name in (names if names is not None else fs)}


def required_keys(cls: type) -> list[str]:
    """Keys without a default."""
    return [f.name for f in config_fields(cls) if f.default is MISSING]
