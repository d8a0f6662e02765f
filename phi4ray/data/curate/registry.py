"""The document filter protocol and its registry (datatrove / NeMo Curator style).

A filter is one class:
- `name`: its key in the registry and in `curate.filters` (the enabled filters, in order);
- `columns`: the columns it writes, name -> pyarrow type. The document schema is assembled from
  the enabled filters' columns, so every score computed is kept beside the text and a threshold
  can be changed and the decision replayed without rescoring;
- `score(rows)`: a batch call that writes those columns into each row (dicts) it is given;
- `decide(row)`: "" keeps the row, anything else drops it and names the rule that failed
  ("dup_5gram_char_frac>0.15"); the row's reason reads "<reason_prefix or name>:<rule>".
Optional: `applies(row)` limits a filter to some rows (language ID skips code); `requires` names
filters whose columns `decide` reads, scored first when they are enabled (corruption's stop-word
rule needs the language).

A new filter is one class decorated with `@register` plus its name in `curate.filters`; one
outside this package can also be named "package.module:Class" there, which is imported where the
filters run (a Ray worker included). `DocumentFilters` (phi4ray.data.curate.documents) runs them.
"""
from __future__ import annotations

import importlib
from typing import ClassVar, Sequence

import pyarrow as pa

from phi4ray.run.errors import ConfigError


class DocumentFilter:
    name: ClassVar[str] = ""
    columns: ClassVar[dict[str, pa.DataType]] = {}
    reason_prefix: ClassVar[str] = ""           # "" = `name` ("contaminated:" reads better than "decontam:")
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config, eval_files: Sequence[str] = ()):
        # config: a CurateConfig (not imported here: phi4ray.data.curate.config imports this registry)
        self.config = config
        self.eval_files = tuple(eval_files)

    def applies(self, row: dict) -> bool:
        return True

    def score(self, rows: list[dict]) -> None:
        raise NotImplementedError

    def decide(self, row: dict) -> str:
        raise NotImplementedError

    @property
    def prefix(self) -> str:
        return self.reason_prefix or self.name


FILTERS: dict[str, type[DocumentFilter]] = {}


def register(cls: type[DocumentFilter]) -> type[DocumentFilter]:
    """Class decorator: make `cls` available to `curate.filters` under `cls.name`."""
    if not cls.name or ":" in cls.name:
        raise ValueError(f"{cls.__name__}: a filter needs a `name` without ':'")
    old = FILTERS.get(cls.name, cls)
    if (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):  # a reloaded module may re-register
        raise ValueError(f"filter name {cls.name!r} is taken by {old.__module__}.{old.__qualname__}")
    FILTERS[cls.name] = cls
    return cls


def filter_class(name: str) -> type[DocumentFilter]:
    if name in FILTERS:
        return FILTERS[name]
    module, sep, attr = name.partition(":")
    if sep:
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"curate.filters: {name!r} cannot be imported: {e}") from None
        if isinstance(cls, type) and issubclass(cls, DocumentFilter):
            return cls
        raise ConfigError(f"curate.filters: {name!r} is not a DocumentFilter subclass")
    raise ConfigError(f"curate.filters: unknown filter {name!r} (registered: {', '.join(sorted(FILTERS))}; "
                      f"or name one as package.module:Class)")


def filter_columns(names: Sequence[str]) -> list[tuple[str, pa.DataType]]:
    """The columns of the enabled filters, in filter order; two filters writing one column is an error."""
    out: dict[str, tuple[str, pa.DataType]] = {}
    for name in names:
        cls = filter_class(name)
        for col, typ in cls.columns.items():
            if col in out:
                raise ConfigError(f"curate.filters: column {col!r} is written by both {out[col][0]!r} and {name!r}")
            out[col] = (name, typ)
    return [(col, typ) for col, (_, typ) in out.items()]


def default_value(typ: pa.DataType):
    """What a row holds in a column its filter never scored (dropped earlier, or not applicable)."""
    if pa.types.is_floating(typ):
        return 0.0
    if pa.types.is_integer(typ):
        return 0
    if pa.types.is_boolean(typ):
        return False
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return ""
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return []
    return None
