"""Typed configuration, the mechanism: YAML, dotted overrides, coercion, checks, hashes.

The sections and their defaults (the paper's) are in :mod:`orl_fast.core.defaults`; this module
loads them: ``load_config("paper", ["train.batch_size=256"])`` resolves a shipped name (``paper``:
the defaults; the YAML files of ``orl_fast/core/configs``) or a path, applies overrides, coerces
every value to its field's type and validates. Every error names the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from orl_fast.core.errors import UserError

if TYPE_CHECKING:
    from orl_fast.core.defaults import Config

# The paper's configuration: the defaults of orl_fast.core.defaults, as they are.
PAPER = "paper"
CONFIGS = "orl_fast.core.configs"
# What a step's path fields hold, for the message of a missing one.
PATH_FIELDS = {"data": "the image shards of `orl-fast ingest`", "out": "the output directory",
               "ckpt": "a checkpoint or run directory, or random", "pairs": "the Stage 2 output directory"}


class ConfigError(UserError, ValueError):
    """A configuration value is missing, unknown or out of range; the message names the field."""


class ConfigRoot:
    """What the root configuration does (its fields are in :class:`orl_fast.core.defaults.Config`)."""

    def validate(self) -> Config:
        validate_sections(self, "")
        return self

    def require(self, *names: str) -> None:
        """ConfigError naming the first of the path fields ``names`` that is empty."""
        for name in names:
            if not getattr(self, name):
                what = f"{PATH_FIELDS[name]}: " if name in PATH_FIELDS else ""
                raise ConfigError(f"{name}: required ({what}pass {name}=PATH)")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Every field by its dotted name (``train.batch_size``), as :func:`flatten` gives."""
        return flatten(self.to_dict())

    def hash(self, *sections: str) -> str:
        """A short stable hash of the named sections (all when none): what a stage's output depends on."""
        d = self.to_dict()
        if sections:
            d = {s: d[s] for s in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict (a config's :meth:`~ConfigRoot.to_dict`) by dotted names of its leaves."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def validate_sections(obj: Any, prefix: str) -> None:
    """``validate(prefix)`` of every section (a dataclass field) of ``obj``."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value.validate(f"{prefix}{f.name}.")


# ----------------------------------------------------------------------------- loading


def shipped_configs() -> list[str]:
    return sorted([PAPER, *(p.name[:-5] for p in resources.files(CONFIGS).iterdir()
                            if p.name.endswith(".yaml"))])


def load_config(name_or_path: str | None = "paper", overrides: list[str] | None = None) -> Config:
    """Shipped name (``paper``, ``small``) or YAML path, then ``a.b=value`` overrides, validated."""
    data: dict[str, Any] = {}
    if name_or_path:
        data = _read_yaml(name_or_path)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected FIELD=VALUE, e.g. train.batch_size=256")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)})"
                              ) from None
        _set_dotted(data, key.strip(), value)
    return from_dict(data).validate()


def path_overrides(overrides: list[str], **paths: str | None) -> list[str]:
    """``overrides`` plus ``name=value`` for every path flag given (``--data X`` is ``data=X``).

    The command line takes a step's paths either way; the same field given both ways with two
    values is a ConfigError naming it."""
    given = {item.partition("=")[0].strip(): item.partition("=")[2] for item in overrides}
    extra = []
    for name, value in paths.items():
        if not value:
            continue
        if name in given and given[name] != value:
            raise ConfigError(f"{name}: given twice, as --{name} {value} and {name}={given[name]}")
        extra.append(f"{name}={json.dumps(value)}")  # a string as it is (JSON is YAML)
    return [*overrides, *extra]


def from_dict(data: dict[str, Any]) -> Config:
    from orl_fast.core.defaults import Config

    return _build(Config, data, "")


def _read_yaml(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if name_or_path == PAPER and not path.exists():
        return {}
    if not path.suffix and not path.exists():
        if name_or_path not in shipped_configs():
            raise ConfigError(
                f"config {name_or_path!r}: not a file and not a shipped config "
                f"(shipped: {', '.join(shipped_configs())})"
            )
        text = resources.files(CONFIGS).joinpath(name_or_path + ".yaml").read_text()
    else:
        if not path.exists():
            raise ConfigError(f"config {name_or_path!r}: file not found")
        if not path.is_file():
            raise ConfigError(f"config {name_or_path!r}: not a file")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config {name_or_path!r}: cannot be read "
                              f"({getattr(e, 'strerror', None) or e})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {name_or_path!r}: not valid YAML ({_yaml_problem(e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {name_or_path!r}: top level must be a mapping")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """Where and what, in one line: "line 3, column 7: expected ',' or ']'"."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown field (allowed in {prefix.rstrip('.') or 'config'}: "
            f"{', '.join(names)})"
        )
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, data[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(data[name], kind, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, kind: Any, path: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is Literal:
        allowed = typing.get_args(kind)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (types.UnionType, typing.Union):
        raise TypeError(f"{path}: union types are not supported in the config")
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if kind is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"{path}: unsupported config type {kind}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------- validators


def _positive(p: str, obj: Any, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if not v > 0:
            raise ConfigError(f"{p}{name}: must be > 0, got {v}")


def _non_negative(p: str, obj: Any, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if v < 0:
            raise ConfigError(f"{p}{name}: must be >= 0, got {v}")


def _probability(p: str, name: str, v: float) -> None:
    if not 0 <= v <= 1:
        raise ConfigError(f"{p}{name}: probabilities must be in [0, 1], got {v}")


def _ordered(p: str, obj: Any, name: str, lo: float | None = None, hi: float | None = None) -> None:
    a, b = getattr(obj, name)
    if a > b or (lo is not None and a <= lo) or (hi is not None and b > hi):
        bounds = (f"{lo} < " if lo is not None else "") + "low <= high" + (
            f" <= {hi}" if hi is not None else "")
        raise ConfigError(f"{p}{name}: expected (low, high) with {bounds}, got {(a, b)}")
