"""Dotted `key=value` overrides on nested dataclass configs, checked before any work starts."""
from __future__ import annotations

import dataclasses
import typing

from phi4ray.run.errors import UserError


class OverrideError(UserError, ValueError):
    """A key=value the config has no place for, or a value of the wrong type."""


def _convert(raw: str, typ, key: str):
    origin = typing.get_origin(typ)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw.lower() in ("none", "null"):
            return None
        typ = args[0]
    if typ is tuple or origin is tuple or typing.get_origin(typ) is tuple:
        # lists on the command line are comma-separated: curate.inputs=web=/data/a,code=/src
        (item_typ, *_) = typing.get_args(typ) or (str,)
        return tuple(_convert(part.strip(), item_typ, key) for part in raw.split(",") if part.strip())
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(raw.replace("_", ""))
        if typ is float:
            return float(raw)
        if typ is str:
            return raw
    except ValueError:
        raise OverrideError(f"{key}={raw!r}: not a valid {typ.__name__}") from None
    raise OverrideError(f"{key}: fields of type {typ} cannot be set from the command line")


def apply_overrides(cfg, overrides: list[str]):
    """Return a copy of dataclass `cfg` with each "a.b.c=value" applied (validated by __post_init__)."""
    for item in overrides:
        if "=" not in item:
            raise OverrideError(f"{item!r}: overrides are key=value (for example model.n_layers=2)")
        key, raw = item.split("=", 1)
        cfg = _set(cfg, key.split("."), raw, key)
    return cfg


def _set(obj, path: list[str], raw: str, key: str):
    if not dataclasses.is_dataclass(obj):
        raise OverrideError(f"{key}: {'.'.join(path)} is not a config section")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name = path[0]
    if name not in fields:
        raise OverrideError(f"unknown config key {key!r}: {type(obj).__name__} has no field {name!r}"
                            f" (fields: {', '.join(fields)})")
    if len(path) == 1:
        hints = typing.get_type_hints(type(obj))
        value = _convert(raw, hints[name], key)
    else:
        value = _set(getattr(obj, name), path[1:], raw, key)
    try:
        return dataclasses.replace(obj, **{name: value})
    except ValueError as e:
        raise OverrideError(f"{key}={raw}: {e}") from None


# --- config files: the same dotted keys, one per line ---------------------------------------------
def _render(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(_render(v) for v in value)
    return str(value)


def flatten(cfg, prefix: str = "") -> dict[str, str]:
    """Every leaf of a dataclass config as {"a.b.c": "value"}, in the form `apply_overrides` reads."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = _render(value)
    return out


def dump_config(cfg, preset: str) -> str:
    """A config file of the whole resolved config (its `preset` line included):
    `phi4ray config --preset small > my.conf`."""
    head = f"# phi4ray config: every key of preset {preset!r} after overrides; edit it and pass --config"
    return "\n".join([head] + [f"{k} = {v}" for k, v in flatten(cfg).items()]) + "\n"


def read_config_file(path: str) -> tuple[str | None, list[str]]:
    """(preset named in the file or None, its `key = value` lines as overrides). `#` starts a
    comment; a line that is not key = value fails naming the file and line."""
    preset, overrides = None, []
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as e:
        raise OverrideError(f"--config {path}: {e.strerror}") from None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        if "=" not in line:
            raise OverrideError(f"{path}:{n}: {line!r} is not `key = value`")
        key, value = (part.strip() for part in line.split("=", 1))
        if key == "preset":
            preset = value
        else:
            overrides.append(f"{key}={value}")
    return preset, overrides
