"""Schemas: how a flow's events (or a signal's values) are checked on the
way in and turned back into Python objects on the way out.

``Schema.of(spec)`` accepts:

* ``None`` -- any JSON value, stored and returned as is;
* a **dataclass** type -- an instance (or a dict of its fields) is stored as
  the dict of its fields, each of the annotated type wherever the annotation
  is a plain class; reading gives an instance back;
* a **pydantic** model class (when pydantic is installed) -- validated with
  ``model_validate``, stored as ``model_dump(mode="json")``, read back with
  ``model_validate``;
* a **TypedDict** type -- the dict must have every required key, no
  unknown key, and values of the annotated type wherever the annotation is
  a plain class (``int``, ``str``, ``list``, a dataclass, ...); read back as
  a dict checked the same way;
* any other **callable** -- a validator: it receives the event and returns
  the value to store, or raises; reading calls it again on the stored value.

Whatever the schema, the stored value must be JSON. A rejected value raises
:class:`~unbroken_server.onepipe.errors.SchemaError`, naming what was wrong,
before anything is written.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Callable

from .errors import SchemaError

__all__ = ["Schema", "check_json"]


def _is_typeddict(spec) -> bool:
    return isinstance(spec, type) and issubclass(spec, dict) and hasattr(spec, "__total__") \
        and hasattr(spec, "__annotations__")


def _is_pydantic(spec) -> bool:
    return isinstance(spec, type) and hasattr(spec, "model_validate") \
        and hasattr(spec, "model_dump")


def check_json(value, what: str) -> Any:
    """``value`` if it can be written as JSON (no NaN or infinity), else
    :class:`SchemaError` naming ``what``."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"{what} is not JSON: {exc}") from None
    return value


class Schema:
    """A checker/encoder/decoder built from a schema spec (see the module doc).

    :ivar name: how error messages name the schema
    """

    def __init__(self, encode: Callable[[Any], Any], decode: Callable[[Any], Any], name: str):
        self._encode = encode
        self._decode = decode
        self.name = name

    @classmethod
    def of(cls, spec) -> "Schema":
        """The schema for ``spec`` (None, a dataclass, a pydantic model, a
        TypedDict or a callable). :raises TypeError: anything else."""
        if spec is None:
            return cls(lambda v: v, lambda v: v, "JSON")
        if isinstance(spec, Schema):
            return spec
        name = getattr(spec, "__qualname__", None) or repr(spec)
        if dataclasses.is_dataclass(spec) and isinstance(spec, type):
            return cls(_dataclass_encoder(spec), _dataclass_decoder(spec), name)
        if _is_pydantic(spec):
            return cls(lambda v: spec.model_validate(v).model_dump(mode="json"),
                       spec.model_validate, name)
        if _is_typeddict(spec):
            check = _typeddict_checker(spec)
            return cls(check, check, name)
        if callable(spec):
            def encode(v):
                out = spec(v)
                return v if out is None else out
            return cls(encode, encode, name)
        raise TypeError(f"a schema is a dataclass, a pydantic model, a TypedDict or a "
                        f"callable, not {spec!r}")

    def encode(self, value, what: str = "value") -> Any:
        """The JSON value to store for ``value``. :raises SchemaError: rejected."""
        try:
            out = self._encode(value)
        except SchemaError as exc:
            raise SchemaError(f"{what} rejected by schema {self.name}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a validator's own error, reported as such
            raise SchemaError(f"{what} rejected by schema {self.name}: "
                              f"{type(exc).__name__}: {exc}") from exc
        return check_json(out, what)

    def decode(self, value, what: str = "stored value") -> Any:
        """The Python object for a stored JSON value.

        :raises SchemaError: the stored value does not fit (written by
            another program, or before the schema changed)
        """
        try:
            return self._decode(value)
        except SchemaError as exc:
            raise SchemaError(f"{what} does not fit schema {self.name}: {exc}") from None
        except Exception as exc:  # noqa: BLE001
            raise SchemaError(f"{what} does not fit schema {self.name}: "
                              f"{type(exc).__name__}: {exc}") from exc


def _check_types(spec, hints: dict, v: dict, what: str) -> None:
    """Values of ``v`` whose annotation is a plain class must be instances
    of it (an int passes for a float; a bool does not pass for an int)."""
    for key, value in v.items():
        kind = hints.get(key, typing.Any)
        plain = kind if isinstance(kind, type) else typing.get_origin(kind)
        if not isinstance(plain, type) or plain is typing.Any:
            continue  # unions, type variables, literals: not checked
        ok = isinstance(value, plain) and not (plain is int and isinstance(value, bool))
        if plain is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise SchemaError(f"{what} {key!r} of {spec.__qualname__} must be "
                              f"{plain.__name__}, got {type(value).__name__}")


def _dataclass_encoder(spec):
    names = {f.name for f in dataclasses.fields(spec)}
    hints = typing.get_type_hints(spec)

    def encode(v):
        if isinstance(v, dict):
            unknown = set(v) - names
            if unknown:
                raise SchemaError(f"unknown field(s) {sorted(unknown)} for {spec.__qualname__}")
            v = spec(**v)  # missing fields raise TypeError, reported by Schema.encode
        if not isinstance(v, spec):
            raise SchemaError(f"expected a {spec.__qualname__}, got {type(v).__name__}")
        fields = {f.name: getattr(v, f.name) for f in dataclasses.fields(spec)}
        _check_types(spec, hints, fields, "field")
        return dataclasses.asdict(v)
    return encode


def _dataclass_decoder(spec):
    """Stored dict -> instance. A JSON number written as ``9.0`` may come
    back as ``9`` (JavaScript servers re-serialise numbers), so an int
    becomes a float where the field is annotated ``float``."""
    hints = typing.get_type_hints(spec)
    floats = {f.name for f in dataclasses.fields(spec) if hints.get(f.name) is float}

    def decode(v):
        if not isinstance(v, dict):
            raise SchemaError(f"expected an object for {spec.__qualname__}, "
                              f"got {type(v).__name__}")
        if floats:
            v = {k: float(x) if k in floats and type(x) is int else x for k, x in v.items()}
        return spec(**v)
    return decode


def _typeddict_checker(spec):
    hints = typing.get_type_hints(spec)
    required = set(getattr(spec, "__required_keys__", hints))

    def check(v):
        if not isinstance(v, dict):
            raise SchemaError(f"expected a dict for {spec.__qualname__}, got {type(v).__name__}")
        missing = required - set(v)
        if missing:
            raise SchemaError(f"missing key(s) {sorted(missing)} for {spec.__qualname__}")
        unknown = set(v) - set(hints)
        if unknown:
            raise SchemaError(f"unknown key(s) {sorted(unknown)} for {spec.__qualname__}")
        _check_types(spec, hints, v, "key")
        return v
    return check
