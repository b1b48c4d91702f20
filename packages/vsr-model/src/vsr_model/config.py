"""Typed configuration loaded strictly from YAML or mappings: the one loader of every config dataclass in
vsr (vsr_model's and vsr_train's).

A mapping is mapped onto a dataclass field by field. Unknown keys, wrong types and out-of-range values
are errors that name the offending key (with its path) and the file: a typo must never silently fall
back to a default. Nested dataclasses, enums, Literals, Optionals, lists and tuples are converted;
a dataclass's own checks (__post_init__, and a `validate(where)` hook) run with the key path in the
error.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the key and the file."""


T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    """Convert one YAML value to the annotated type, or raise ConfigError naming key and file."""
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: '{key}' = {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, f"{key}.", where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be a list, got {type(value).__name__}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: '{key}' must have {len(args)} items, got {len(value)}")
            return tuple(
                _convert(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {type(value).__name__}")
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(
                f"{where}: '{key}' must be one of {[m.value for m in tp]}, got {value!r}"
            ) from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        # YAML reads "1e-5" (no dot) as a string; accept numeric strings so scientific notation works.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: '{key}' has an unsupported type {_type_name(tp)}")


def _build(cls: type[T], data: dict[str, Any], prefix: str, where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        keys = ", ".join(f"'{prefix}{k}'" for k in unknown)
        raise ConfigError(f"{where}: unknown key(s) {keys}; valid keys here: {sorted(names)}")
    kwargs = {name: _convert(value, hints[name], f"{prefix}{name}", where) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {exc}") from exc
    # Sections left at their defaults are validated too (a default model section has no model to load).
    for name in sorted(names - set(data)):
        default = getattr(obj, name)
        if dataclasses.is_dataclass(default) and hasattr(default, "validate"):
            default.validate(where)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj


def config_from_dict(cls: type[T], data: dict[str, Any], where: str = "<dict>") -> T:
    """Build ``cls`` from a plain mapping, strictly (unknown keys and wrong types raise ConfigError)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping, got {type(data).__name__}")
    return _build(cls, data, "", where)


def load_config(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file, then apply ``key.sub=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    for item in overrides or []:
        apply_override(data, item, str(path))
    return _build(cls, data, "", str(path))


def apply_override(data: dict[str, Any], item: str, where: str) -> None:
    """Set ``a.b.c=value`` in a nested mapping; the value is parsed as YAML (so 3, 1e-5, true, [1,2] work)."""
    if "=" not in item:
        raise ConfigError(f"{where}: override {item!r} must look like key.sub=value")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: override {item!r}: '{key}' is not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data form of a config (tuples become lists, enums their values) for logging next to a run."""

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))
