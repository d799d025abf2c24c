"""Typed dataclasses from YAML: the engine under both schemas (the experiment config,
pipeline/config.py, and the sweep file, pipeline/sweeps/spec.py). Mappings become dataclass
instances with every value coerced to its field's type; unknown keys and wrong types are one-line
`ConfigError`s naming the key and what is allowed."""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import yaml

from tasks.errors import ConfigError, closest


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict:
    """{"task": {"shots": 10}} -> {"task.shots": 10} (MLflow params, sweep keys)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_yaml(path: Path, what: str = "config") -> dict:
    """A YAML mapping read with yaml.safe_load; errors name the file in one line."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    except (UnicodeDecodeError, OSError) as e:  # a damaged or unreadable file
        reason = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        raise ConfigError(f"{what}: {path} cannot be read as text ({reason})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what}: {path} must hold a mapping of keys, got {type(raw).__name__}")
    return raw


def field_types(cls) -> dict:
    return typing.get_type_hints(cls)


def unknown_key(cls, key: str, prefix: str) -> str:
    """`prefix.key: unknown key; did you mean 'prefix.k'? allowed: ...` (the closest key of the section)."""
    names = [f.name for f in dataclasses.fields(cls)]
    match = closest(key, names)  # within the section: a shared prefix is no likeness
    hint = f" did you mean {prefix + match!r}?" if match else ""
    return f"{prefix}{key}: unknown key;{hint} allowed: {', '.join(prefix + n for n in names)}"


def build(cls, raw: dict, prefix: str = ""):
    """A dataclass instance from a mapping: unknown keys and wrong types are one-line errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints, kwargs = field_types(cls), {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(unknown_key(cls, key, prefix))
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def get_key(cfg, dotted: str):
    """cfg.<dotted key> (set_key's counterpart; the key is known to exist)."""
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def set_key(cfg, dotted: str, value) -> None:
    """cfg.<dotted key> = value, coerced to the field's type; unknown keys are one-line errors."""
    obj, parts = cfg, dotted.split(".")
    for i, part in enumerate(parts):
        hints = field_types(type(obj))
        prefix = ".".join(parts[:i])
        if part not in hints:
            raise ConfigError(unknown_key(type(obj), part, prefix + "." if prefix else ""))
        if i == len(parts) - 1:
            setattr(obj, part, _coerce(hints[part], value, dotted))
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"{dotted}: {'.'.join(parts[:i + 1])} is not a section")


def _coerce(tp, value, key: str):
    if isinstance(tp, types.UnionType):  # int | str: the first type the value is
        for member in typing.get_args(tp):
            if isinstance(value, member) and not isinstance(value, bool):
                return value
        raise ConfigError(f"{key}: expected {' or '.join(t.__name__ for t in typing.get_args(tp))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, f"{key}.")
    origin = typing.get_origin(tp)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):  # "--set eval.shots=5,10" as well as "[5, 10]"
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            value = [value]
        return [_coerce(item_tp, v, key) for v in value]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            pass
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")


def float_fields(obj, prefix: str = ""):
    """(dotted key, value) of every float-typed field, sections included: new keys are covered too."""
    hints = field_types(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from float_fields(value, f"{prefix}{f.name}.")
        elif hints[f.name] is float or hints[f.name] == list[float]:
            yield from ((f"{prefix}{f.name}", v) for v in (value if isinstance(value, list) else [value]))
