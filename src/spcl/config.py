"""Configuration: YAML files checked against the dataclass schema, plus ``a.b=c`` overrides.

Every problem is a :class:`ConfigError` that names the key and where it came from (the YAML file,
or the command-line override): an unknown key lists the valid ones, a wrong type says what was
expected, a value out of its range (declared with its type in :mod:`spcl.config_schema`) or values
that do not go together (a section's ``problems()``) say what would work, a required value left
unset says how to set it. Numbers may be written ``1e-4`` (read as YAML 1.2 does), and a whole
number written ``4e4`` fits an integer key. A YAML file may start from another with
``base: other.yaml`` (relative to the file); its keys are merged over the base's.

An inherited key is removed or replaced by the conventions users know from mmengine and Hydra: in
a YAML file, a mapping holding ``_delete_: true`` replaces the inherited mapping instead of being
merged into it (``options: {_delete_: true, fusion: sepaspp}``; an empty ``{_delete_: true}``
clears it); on the command line, ``~dotted.key`` removes a key (a schema key returns to its
default). See docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from spcl.base import ConfigError, atomic_file, did_you_mean, load_yaml
from spcl.config_schema import REQUIRED, Config

__all__ = [
    "ConfigError",
    "config_to_dict",
    "dump_config",
    "load_config",
    "resolve_config_path",
    "save_config",
]

BASE_KEY = "base"  # top-level YAML key naming a file to inherit from
DELETE_KEY = "_delete_"  # in a mapping: replace the inherited mapping, do not merge (mmengine)
REMOVE_PREFIX = "~"  # command line: ``~a.b`` removes key a.b (Hydra)
PACKAGED_CONFIGS = Path(__file__).parent / "configs"  # configs shipped with spcl (demo, ...)
YAML_BOOLEANS = {  # the words YAML 1.1 (PyYAML) reads as booleans, lower-cased
    **dict.fromkeys(("y", "yes", "true", "on"), True),
    **dict.fromkeys(("n", "no", "false", "off"), False),
}


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    require_all: bool = True,
) -> Config:
    """Load a config: schema defaults ← YAML file (and its bases) ← ``key.sub=value`` overrides.

    Args:
        path: YAML file, or None for the schema defaults.
        overrides: strings ``dotted.key=value``; the value is parsed as YAML (``3`` is an int,
            ``[1, 2]`` a list, ``null`` None, ``1e-4`` a float).
        require_all: fail when a required value is left unset (``???``); False keeps the
            placeholder, e.g. to print a partial config.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or a required value left unset.
    """
    raw: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        _merge(raw, origins, _read_yaml(Path(path), seen=()), "", lambda key: str(path))
    for text in overrides:
        if text.startswith(REMOVE_PREFIX):
            _remove(raw, origins, text)
            continue
        key, value = _parse_override(text)
        _merge(raw, origins, _nest(key, value), "", lambda _k, t=text: f"override '{t}'")
    config = _build(Config, raw, "", origins)
    missing = _missing(config, "")
    if missing and require_all:
        where = f"in {path} " if path is not None else ""
        raise ConfigError(
            f"required value(s) not set: {', '.join(missing)}; set them {where}"
            f"or on the command line as {missing[0]}=VALUE"
        )
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists (YAML/JSON-ready)."""
    return dataclasses.asdict(config)


def dump_config(config: Any) -> str:
    """The resolved config as YAML text, keys in schema order."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML atomically (temporary file, then rename)."""
    with atomic_file(path, "w") as handle:
        handle.write(dump_config(config))


def resolve_config_path(path: str | Path) -> Path:
    """A config file path; a bare name such as ``demo`` names a config shipped with spcl.

    Raises:
        ConfigError: neither a file nor a shipped config (lists the shipped ones).
    """
    path = Path(path)
    if path.is_file():
        return path
    shipped = PACKAGED_CONFIGS / (path.name if path.suffix else f"{path.name}.yaml")
    if shipped.is_file() and len(path.parts) <= 2:
        return shipped
    names = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
    raise ConfigError(
        f"config file not found: {path}{did_you_mean(path.stem, names)} (shipped configs: "
        f"{', '.join(names)})"
    )


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """Read one YAML mapping, resolving ``base:`` chains (cycles are errors)."""
    path = resolve_config_path(path)
    resolved = path.resolve()
    if resolved in seen:
        chain = " → ".join(str(p) for p in (*seen[seen.index(resolved) :], resolved))
        raise ConfigError(f"{path}: 'base' chain loops back to {path} ({chain})")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(f"{path}: refused: {_unsafe_tag(exc)}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys at the top, got {type(data).__name__}"
        )
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    merged = _read_yaml(path.parent / str(base), (*seen, resolved))
    _merge(merged, {}, data, "", lambda _k: str(path))
    return merged


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' is not of the form dotted.key=value")
    try:
        return key, load_yaml(value) if value != "" else ""
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(f"override '{text}': refused: {_unsafe_tag(exc)}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML: {_one_line(exc)}") from exc


def _one_line(exc: yaml.YAMLError) -> str:
    """PyYAML's problem and its column, in one line (its own text spans five)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem is None or mark is None:
        return " ".join(str(exc).split())
    return f"{problem} at character {mark.column + 1}"


def _unsafe_tag(exc: yaml.constructor.ConstructorError) -> str:
    """One line for a YAML tag that would build a Python object (never constructed)."""
    where = f" (line {exc.problem_mark.line + 1})" if exc.problem_mark is not None else ""
    return f"{exc.problem}{where}; configs hold plain values only (no Python object tags)"


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _merge(dst: dict, origins: dict[str, str], src: dict, prefix: str, origin_of) -> None:
    """Merge ``src`` into ``dst`` recursively, recording where each leaf came from.

    A mapping of ``src`` holding ``_delete_: true`` replaces ``dst``'s mapping at that key
    instead of merging into it (its marker is dropped).
    """
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if key == DELETE_KEY:
            raise ConfigError(
                f"{origin_of(dotted)}: '{DELETE_KEY}' belongs inside a mapping it replaces "
                f"(e.g. options: {{{DELETE_KEY}: true, ...}}), not at the top level"
            )
        replace = isinstance(value, dict) and _replaces(value, dotted, origin_of)
        if isinstance(value, dict) and isinstance(dst.get(key), dict) and not replace:
            _merge(dst[key], origins, value, dotted + ".", origin_of)
        elif isinstance(value, dict):
            dst[key] = {}
            _forget(origins, dotted)
            _merge(dst[key], origins, value, dotted + ".", origin_of)
        else:
            dst[key] = value
        origins[dotted] = origin_of(dotted)


def _replaces(mapping: dict, dotted: str, origin_of) -> bool:
    """Whether ``mapping`` asks to replace what it would merge into; removes the marker."""
    if DELETE_KEY not in mapping:
        return False
    flag = mapping.pop(DELETE_KEY)
    if not isinstance(flag, bool):
        raise ConfigError(
            f"{origin_of(dotted)}: '{dotted}.{DELETE_KEY}' must be true or false, got {flag!r}"
        )
    return flag


def _forget(origins: dict[str, str], dotted: str) -> None:
    """Drop the recorded origins of every key under ``dotted`` (it was removed or replaced)."""
    for key in [k for k in origins if k.startswith(dotted + ".")]:
        del origins[key]


def _remove(raw: dict, origins: dict[str, str], text: str) -> None:
    """Apply ``~dotted.key``: remove the key from the merged YAML (the schema default applies).

    Raises:
        ConfigError: malformed, or the key is neither set nor a key of the schema.
    """
    dotted = text[len(REMOVE_PREFIX) :]
    parts = dotted.split(".")
    if "=" in dotted or not dotted or any(not part for part in parts):
        raise ConfigError(
            f"override '{text}' is not of the form ~dotted.key (removes the key; to set a value "
            f"write dotted.key=value)"
        )
    node = raw
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and parts[-1] in node:
        del node[parts[-1]]
        _forget(origins, dotted)
        origins[dotted] = f"override '{text}'"
        return
    if not _schema_has(Config, parts):
        raise ConfigError(
            f"override '{text}': there is no key '{dotted}' to remove (it is neither set by the "
            f"config nor a key of the schema)"
        )


def _schema_has(cls: type, parts: list[str]) -> bool:
    """Whether the dotted ``parts`` name a key of the dataclass schema ``cls``."""
    for part in parts:
        if not dataclasses.is_dataclass(cls):
            return False
        hints = typing.get_type_hints(cls, include_extras=True)
        if part not in hints:
            return False
        cls = hints[part]
    return True


def _origin(origins: dict[str, str], dotted: str) -> str:
    while dotted:
        if dotted in origins:
            return origins[dotted]
        dotted = dotted.rpartition(".")[0]
    return "the defaults"


def _build(cls: type, raw: Any, prefix: str, origins: dict[str, str]) -> Any:
    """Instantiate dataclass ``cls`` from ``raw``, checking keys and types."""
    name = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{_origin(origins, prefix.rstrip('.'))}: '{name}' must be a mapping of keys, "
            f"got {raw!r}"
        )
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in raw if key not in fields]
    if unknown:
        dotted = f"{prefix}{unknown[0]}"
        raise ConfigError(
            f"{_origin(origins, dotted)}: unknown key '{dotted}'"
            f"{did_you_mean(unknown[0], fields)}; valid keys under {name}: "
            f"{', '.join(fields)}"
        )
    default = cls()
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            base = dataclasses.asdict(getattr(default, key))
            merged = _deep_update(base, value) if isinstance(value, dict) else value
            kwargs[key] = _build(hint, merged, dotted + ".", origins)
        else:
            kwargs[key] = _coerce(value, hint, dotted, origins)
    built = dataclasses.replace(default, **kwargs)
    problems = getattr(built, "problems", None)
    for keys, message in problems() if problems is not None else ():
        dotted = [f"{prefix}{k}" for k in keys]
        where = next((_origin(origins, d) for d in dotted if d in origins), None)
        where = where or _origin(origins, prefix.rstrip("."))
        raise ConfigError(f"{where}: {' and '.join(f'{d!r}' for d in dotted)}: {message}")
    return built


def _deep_update(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def _coerce(value: Any, hint: Any, dotted: str, origins: dict[str, str]) -> Any:
    """Check ``value`` against the type ``hint``; ints are accepted where floats are expected."""
    if value == REQUIRED:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        value = _coerce(value, args[0], dotted, origins)
        for constraint in args[1:]:
            problem = constraint.problem(value)
            if problem is not None:
                raise ConfigError(
                    f"{_origin(origins, dotted.split('[')[0])}: key '{dotted}' must be "
                    f"{problem}, got {value!r}"
                )
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], dotted, origins)
    if origin is Literal:
        if value in args:
            return value
        word = _boolean_word(value, args)
        if word is not None:  # run.amp=off: YAML 1.1 reads the word as a boolean
            return word
        return _type_error(value, f"one of {list(args)}", dotted, origins)
    if origin is dict:
        if not isinstance(value, dict):
            return _type_error(value, "a mapping", dotted, origins)
        return dict(value)
    if origin is list:
        if not isinstance(value, list | tuple):
            return _type_error(value, f"a list of {_name(args[0])}", dotted, origins)
        return [_coerce(v, args[0], f"{dotted}[{i}]", origins) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 4e4 (a float in YAML) for an iteration count
    if hint in (str, bool) and isinstance(value, hint):
        return value
    article = "an" if hint.__name__[0] in "aeiou" else "a"
    return _type_error(value, f"{article} {hint.__name__}", dotted, origins)


def _boolean_word(value: Any, choices: tuple[Any, ...]) -> str | None:
    """The one choice of a Literal that YAML 1.1 reads as the boolean ``value`` (``off``, ``no``,
    ``on``, ``yes``, ...), or None: ``run.amp=off`` and ``amp: off`` mean the word, not False."""
    if not isinstance(value, bool):
        return None
    words = [c for c in choices if isinstance(c, str) and YAML_BOOLEANS.get(c.lower()) is value]
    return words[0] if len(words) == 1 else None


def _name(hint: Any) -> str:
    """A type's name for messages (the base type of an ``Annotated`` one)."""
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return getattr(hint, "__name__", str(hint))


def _type_error(value: Any, expected: str, dotted: str, origins: dict[str, str]) -> Any:
    raise ConfigError(
        f"{_origin(origins, dotted.split('[')[0])}: key '{dotted}' expects {expected}, "
        f"got {value!r} ({type(value).__name__})"
    )


def _missing(config: Any, prefix: str) -> list[str]:
    out: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out += _missing(value, f"{prefix}{f.name}.")
        elif value == REQUIRED:
            out.append(f"{prefix}{f.name}")
    return out
