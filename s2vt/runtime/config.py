"""Typed configs: fields carry their help text, configs check their own values, and the
command line is made from them one way.

A config dataclass declares each field with :func:`option` (default, help, choices,
range). ``check_fields(self)`` in its ``__post_init__`` validates types, ranges, choices
and finiteness, so Python callers and the CLI get the same errors. :func:`add_arguments`
turns the fields into argparse flags whose help is the field's text (fairseq-style).
A field declared with :func:`nested` holds another config; an ``inline`` one is a named group
of the enclosing config's own options (its flags, in the field's place, and its ``when``
conditions on the enclosing config's fields).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any, Iterable, Optional, Sequence

from s2vt.runtime.errors import ConfigError, FieldError


INT64_MAX = 2 ** 63 - 1  # the largest integer numpy and torch take


def option(default: Any, help: str, choices: Optional[Sequence] = None, low: Optional[float] = None,
           high: Optional[float] = None, low_open: bool = False, cli: bool = True, feature: Optional[str] = None,
           when: Optional[dict] = None, infinite: bool = False) -> Any:
    """A dataclass field with its help text and allowed values (``low``/``high`` inclusive unless ``low_open``).

    ``feature``: the dotted key this field takes in a feature signature (it defines what a feature
    means); ``when``: {field: value} under which the field applies (e.g. only for the flow stream);
    ``infinite``: a float that may be +-inf (never NaN)."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open, "cli": cli,
            "feature": feature, "when": when or {}, "infinite": infinite}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def nested(cls, inline: bool = False) -> Any:
    """A field holding config ``cls`` (its default: ``cls()``). ``inline``: a group of the enclosing
    config's options, whose flags and checks are the enclosing config's (see :func:`add_arguments`)."""
    return dataclasses.field(default_factory=cls, metadata={"config": cls, "inline": inline})


def configs(cls, inline: Optional[bool] = None) -> dict:
    """{field: config class} of the fields of ``cls`` declared with :func:`nested` (``inline``: only
    the inline groups, or only the others)."""
    return {f.name: f.metadata["config"] for f in dataclasses.fields(cls) if "config" in f.metadata
            and inline in (None, f.metadata["inline"])}


def merged(cls, *layers: dict) -> dict:
    """``cls``'s options from dicts of them, later over earlier; a nested config's dicts merge key by key."""
    out: dict = {}
    for d in layers:
        out.update({k: v for k, v in d.items() if k not in configs(cls)})
    for key in configs(cls):
        parts = [d[key] for d in layers if key in d]
        if parts:
            out[key] = {k: v for part in parts for k, v in part.items()}
    return out


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp):
    """int, float, str or bool from an annotation (``Optional[X]`` -> X)."""
    if isinstance(tp, str):
        return {"int": int, "float": float, "str": str, "bool": bool}.get(tp.replace("Optional[", "").rstrip("]"))
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def check_value(name: str, value: Any, f: dataclasses.Field, owner: str) -> None:
    """Raise ConfigError when ``value`` breaks the field's type, choices or range."""
    m, tp = f.metadata, _base_type(f.type)
    if value is None and (isinstance(f.type, str) and "Optional" in f.type):
        return
    if tp in (int, float, str, bool):
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise FieldError(name, owner, f"must be {tp.__name__}", f"{_number(value)} ({type(value).__name__})")
    if m.get("choices") and value not in m["choices"]:
        raise FieldError(name, owner, f"must be one of {', '.join(map(str, m['choices']))}", _number(value))
    if tp in (int, float) and value is not None:
        if isinstance(value, float) and (math.isnan(value) or (math.isinf(value) and not m.get("infinite"))):
            raise FieldError(name, owner, "must be a finite number", repr(value))
        low, high = m.get("low"), m.get("high")
        if tp is int and not -INT64_MAX - 1 <= value <= INT64_MAX:  # numpy and torch take 64-bit integers
            high = INT64_MAX if high is None else high
            low = -INT64_MAX - 1 if low is None else low
        if low is not None and (value < low or (m.get("low_open") and value == low)):
            raise FieldError(name, owner, f"must be {'>' if m.get('low_open') else '>='} {_number(low)}", _number(value))
        if high is not None and value > high:
            raise FieldError(name, owner, f"must be <= {_number(high)}", _number(value))


def _number(v) -> str:
    """A bound or value for a message: the 64-bit limits by name, huge values shortened."""
    names = {INT64_MAX: "2**63-1", -INT64_MAX - 1: "-2**63"}
    if isinstance(v, int) and v in names:
        return f"{names[v]} ({v})"
    try:
        text = repr(v)
    except ValueError:  # an integer of more digits than Python converts
        return f"an integer of about {int(v.bit_length() * 0.30103)} digits"
    if len(text) <= 60:
        return text
    return f"{text[:20]}... ({len(text)} digits)" if isinstance(v, int) else f"{text[:50]}... ({len(text)} characters)"


def applies(obj, f: dataclasses.Field) -> bool:
    """Whether field ``f`` of ``obj`` applies: every condition of its ``when`` holds ({field: value},
    or {field: (values...)} for one of several). A condition on a field ``obj`` lacks is the enclosing
    config's to check (``f`` is in an inline group)."""
    return all(getattr(obj, k) in v if isinstance(v, tuple) else getattr(obj, k) == v
               for k, v in f.metadata.get("when", {}).items() if hasattr(obj, k))


def _conditions(when: dict) -> str:
    return " and ".join(f"{flag(k)} {' or '.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in when.items())


def check_fields(obj, within=None) -> None:
    """Validate every field of a config dataclass declared with :func:`option`; a field given a value
    where it does not apply (its ``when`` does not hold) is refused rather than silently ignored. A
    :func:`nested` field must hold its config; an inline group's fields are checked ``within`` ``obj``
    (their ``when`` conditions name its fields, and it is named as their owner)."""
    scope = obj if within is None else within
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if "config" in f.metadata:
            if not isinstance(value, f.metadata["config"]):
                raise ConfigError(f"{type(obj).__name__}.{f.name} must be a {f.metadata['config'].__name__}, "
                                  f"got {type(value).__name__}")
            if f.metadata["inline"]:
                check_fields(value, scope)
        if "help" not in f.metadata:
            continue
        check_value(f.name, value, f, type(obj).__name__)
        if not applies(scope, f) and value != f.default:
            raise FieldError(f.name, type(scope).__name__, f"applies only with {_conditions(f.metadata['when'])}",
                             _number(value))


def from_dict(cls, d: Any, what: str = "config", nested: Optional[dict] = None, ignore: Iterable[str] = ()):
    """Build ``cls`` from a dict, refusing unknown keys; ``nested`` maps a field to its config class (the
    fields declared with :func:`nested` are known without it). A nested value that is already its
    config is taken as it is."""
    if not isinstance(d, dict):
        raise ConfigError(f"{what} must be a JSON object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names - set(ignore)
    if unknown:
        raise ConfigError(f"{what}: unknown options {sorted(unknown)} (known: {', '.join(sorted(names))})")
    d = {k: v for k, v in d.items() if k in names}
    for key, sub in {**configs(cls), **(nested or {})}.items():
        if key in d and not isinstance(d[key], sub):
            d[key] = from_dict(sub, d[key], f"{what}.{key}")
    return cls(**d)


def add_arguments(parser: argparse.ArgumentParser, cls, dest_prefix: str = "", skip: Iterable[str] = ()) -> None:
    """One flag per field of ``cls`` with the field's help, an inline group's in its place; defaults stay
    None (= not given)."""
    for f in dataclasses.fields(cls):
        m = f.metadata
        if m.get("inline") and f.name not in skip:
            add_arguments(parser, m["config"], dest_prefix, skip)
        if f.name in skip or "help" not in m or not m.get("cli", True):
            continue
        tp = _base_type(f.type)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = "" if default in (None, "") else f" (default: {default})"
        kw = dict(dest=dest_prefix + f.name, default=None, help=m["help"] + shown)
        if tp is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        else:
            parser.add_argument(flag(f.name), type=tp, choices=m.get("choices"),
                                metavar=None if m.get("choices") else f.name.upper(), **kw)


def feature_fields(obj) -> list:
    """The fields of ``obj`` that define its features (declared with ``feature=``) and apply to its values."""
    return [f for f in dataclasses.fields(obj) if f.metadata.get("feature") and applies(obj, f)]


def as_flags(obj, fields) -> str:
    """The command-line flags that set ``fields`` of ``obj`` to their values (None: left out)."""
    out = []
    for f in fields:
        v = getattr(obj, f.name)
        if v is None:
            continue
        if isinstance(v, bool):
            out.append(flag(f.name) if v else "--no-" + f.name.replace("_", "-"))
        else:
            out.append(f"{flag(f.name)} {v}")
    return " ".join(out)


def overrides(args: argparse.Namespace, cls, dest_prefix: str = "") -> dict:
    """The fields of ``cls`` given on the command line (not None); an inline group's as a dict of them."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("inline"):
            group = overrides(args, f.metadata["config"], dest_prefix)
            if group:
                out[f.name] = group
            continue
        v = getattr(args, dest_prefix + f.name, None)
        if v is not None:
            out[f.name] = v
    return out
