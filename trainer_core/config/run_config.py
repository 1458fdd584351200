"""The one typed run config: it drives the dashboard form, the CLI and the trainer.

`RunConfig` is a name plus its sections (their fields, docs and checks are in `sections.py`). This module builds it
from plain data with every value's type checked, reads it from YAML, applies `--set key=value` overrides and finds
the docstring under a field for help text. Every refusal is a coded `UserError` naming the dotted field.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer_core.config.sections import (DEFAULT_PERSONA, LAUNCHERS, MAX_LENGTH_RANGE, OFFLOAD_DEVICES, PRECISIONS,
                                          SCHEDULERS, DataArgs, DeepSpeedArgs, EvalArgs, LoraArgs, ModelArgs,
                                          PlacementArgs, TrainArgs, collecting, short, system_dir)
from trainer_core.common.errors import Text, UserError, UserErrors, text
from trainer_core.common.user_files import read_text

# Names importers take from here; the sections module holds them.
__all__ = ["DEFAULT_PERSONA", "LAUNCHERS", "MAX_LENGTH_RANGE", "OFFLOAD_DEVICES", "PRECISIONS", "SCHEDULERS",
           "SECTIONS", "RunConfig", "apply_overrides", "config_from_dict", "field_help", "load_config",
           "parse_override", "save_config", "system_dir"]

# libyaml's safe loader when PyYAML was built with it: 10x faster, and the Runs page parses every run's config.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch: "$" would let a trailing newline in


@dataclass
class RunConfig:
    name: str = ""
    """Run name (letters, digits, . _ -); empty: generated from the time."""

    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    deepspeed: DeepSpeedArgs = field(default_factory=DeepSpeedArgs)
    placement: PlacementArgs = field(default_factory=PlacementArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)

    def __post_init__(self) -> None:
        if self.name and not RUN_NAME_RE.fullmatch(self.name):
            raise UserError("config.run_name", "{name} may only hold letters, digits, '.', '_' and '-' and start "
                            "with a letter or digit (got {value})", name="name", value=short(self.name))

    @property
    def world_size(self) -> int:
        return self.placement.num_ranks * self.placement.num_nodes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False)


SECTIONS: dict[str, type] = {k: t for k, t in typing.get_type_hints(RunConfig).items() if dataclasses.is_dataclass(t)}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, typ: Any, name: str) -> Any:
    """Check a YAML value against a field type; ints are accepted where floats are expected."""
    if typing.get_origin(typ) is list:
        (item,) = typing.get_args(typ)
        if isinstance(value, (int, str)) and not isinstance(value, bool) and item in (int, str):
            # "0,1,3" or a single id, the way people type GPU lists (and "q_proj,v_proj" module names).
            value = [v for v in str(value).replace(" ", "").split(",") if v != ""]
        if not isinstance(value, list):
            raise UserError("config.not_a_list", "{name} must be a list (got {kind} {value})",
                            name=name, kind=type(value).__name__, value=short(value))
        return [_coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise UserError("config.not_a_bool", "{name} must be true or false (got {value})",
                        name=name, value=short(value))
    if typ is int:
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError("config.not_an_int", "{name} must be a whole number (got {value})",
                        name=name, value=short(value))
    if typ is float:
        return _coerce_float(value, name)
    if typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError("config.not_text", "{name} must be text (got {value})", name=name, value=short(value))
    raise AssertionError(f"unsupported field type {typ} for {name}")


def _coerce_float(value: Any, name: str) -> float:
    number = None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    if number is None:
        raise UserError("config.not_a_number", "{name} must be a number (got {value})", name=name, value=short(value))
    if not math.isfinite(number):  # inf epochs would never end; nan fails no comparison-based check
        raise UserError("config.not_finite", "{name} must be a finite number (got {value})",
                        name=name, value=short(value))
    return number


# Names people bring from other tools (the tutorial's train.sh, HF TrainingArguments) -> our field.
ALIASES = {"lr": "learning_rate", "batch_size": "micro_batch_size", "per_device_train_batch_size": "micro_batch_size",
           "gradient_accumulation_steps": "gradient_accumulation", "num_train_epochs": "epochs",
           "zero_stage": "stage", "max_len": "max_length", "system": "persona", "model_path": "path"}


def _unknown_key(name: str, choices: list[str]) -> UserError:
    prefix, _, leaf = name.rpartition(".")
    alias = f"{prefix}.{ALIASES[leaf]}" if prefix and leaf in ALIASES else ALIASES.get(leaf)
    # Compare field names only: the shared "section." prefix would make any key look close to some field.
    leaves = {c.rpartition(".")[2]: c for c in choices}
    close = [alias] if alias in choices else [leaves[m] for m in difflib.get_close_matches(leaf, leaves, n=1)]
    if close:
        return UserError("config.unknown_key_close", "unknown config key {key} (did you mean {suggestion}?)",
                         key=repr(name), suggestion=close[0])
    return UserError("config.unknown_key", "unknown config key {key} (known: {known})",
                     key=repr(name), known=", ".join(sorted(choices)))


def _build_section(cls: type, raw: Any, prefix: str, found: list[UserError]) -> Any:
    """The section built from `raw`; each problem goes into `found` (a field of the wrong type keeps its default,
    so the section's own checks still run on the others)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        found.append(UserError("config.section_not_mapping", "{name} must be a mapping of keys to values (got "
                               "{value})", name=prefix, value=short(raw)))
        return None
    types = _field_types(cls)
    kwargs = {}
    for key, value in raw.items():
        name = f"{prefix}.{key}"
        try:
            if key not in types:
                raise _unknown_key(name, [f"{prefix}.{k}" for k in types])
            kwargs[key] = _coerce(value, types[key], name)
        except UserError as e:
            found.append(e)
    return cls(**kwargs)


def config_from_dict(raw: Any) -> RunConfig:
    """Build and validate a RunConfig from plain data (parsed YAML). Every problem is found in one pass: one raises
    as itself, several as `UserErrors` carrying each (one per field)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError("config.not_a_mapping",
                        "the config must be a YAML mapping with keys like model, data, train, deepspeed, placement")
    kwargs: dict[str, Any] = {}
    with collecting() as found:
        for key, value in raw.items():
            try:
                if key == "name":
                    kwargs["name"] = _coerce(value if value is not None else "", str, "name")
                elif key in SECTIONS:
                    kwargs[key] = _build_section(SECTIONS[key], value, key, found)
                else:
                    raise _unknown_key(str(key), ["name", *SECTIONS])
            except UserError as e:
                found.append(e)
        try:
            cfg = RunConfig(**{k: v for k, v in kwargs.items() if v is not None})
        except UserError as e:
            found.append(e)
    found = _first_per_field(found)
    if len(found) == 1:
        raise found[0]
    if found:
        raise UserErrors(found)
    return cfg


def _first_per_field(found: list[UserError]) -> list[UserError]:
    """One problem per field (the first its checks found): a value out of range often breaks a rule between
    fields too, and the user fixes the value once."""
    seen, out = set(), []
    for e in found:
        name = e.text.params.get("name")
        if isinstance(name, str) and name in seen:
            continue
        seen.add(name)
        out.append(e)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.learning_rate=2e-5` -> (["train", "learning_rate"], 2e-5)."""
    if "=" not in item:
        raise UserError("config.set_no_equals", "--set {item} must look like key=value, e.g. train.learning_rate=2e-5",
                        item=short(item))
    key, value_text = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise UserError("config.set_no_key", "--set {item} has no key before '='", item=short(item))
    try:
        value = yaml.load(value_text, Loader=SAFE_LOADER) if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text
    except RecursionError:  # the pure-Python loader (PyYAML without libyaml) recurses per nesting level
        raise UserError("config.set_too_nested", "--set {key} value is nested too deeply; give a plain value",
                        key=key.strip()) from None
    except ValueError as e:  # an integer past Python's conversion limit, a date that does not exist
        raise _yaml_value_error(text("config.where_set", "--set {key}", key=key.strip()), value_text, e) from None
    return keys, value


def _yaml_value_error(where: Text, source: str, e: ValueError) -> UserError:
    """A value YAML recognised but Python cannot build: an integer of more than 4,300 digits (Python's guard
    against slow conversion), or a date such as 2024-13-45."""
    limit = sys.get_int_max_str_digits()
    if limit and re.search(r"\d{%d}" % (limit + 1), source):
        return UserError("config.long_integer", "{where}: holds a number of more than {limit:,} digits, which no "
                         "field takes", where=where, limit=limit)
    return UserError("config.bad_value", "{where}: holds a value that cannot be read ({detail})", where=where,
                     detail=str(e).splitlines()[0][:200])


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `key=value` override applied (dotted keys for nested sections)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    for item in overrides:
        keys, value = parse_override(item)
        if keys == ["name"]:
            out["name"] = item.split("=", 1)[1]  # a run called "yes" or "2024" stays text
            continue
        if len(keys) == 1:
            out[keys[0]] = value
            continue
        if len(keys) != 2:
            raise UserError("config.set_too_deep", "--set key {key} is too deep: use section.field, e.g. "
                            "train.epochs=2", key=repr(".".join(keys)))
        if out.get(keys[0]) is None:  # absent, or an empty `train:` in the YAML
            out[keys[0]] = {}
        section = out[keys[0]]
        if not isinstance(section, dict):
            raise UserError("config.set_not_section", "--set {key} is not a section", key=keys[0])
        # Text fields keep exactly what was typed (a persona of "123" stays text).
        cls = SECTIONS.get(keys[0])
        if cls is not None and _field_types(cls).get(keys[1]) is str:
            value = item.split("=", 1)[1]
        section[keys[1]] = value
    return out


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config (or start from defaults when path is None) and apply --set overrides."""
    raw = _read_yaml(Path(path)) if path is not None else {}
    return config_from_dict(apply_overrides(raw, list(overrides)))


def _read_yaml(p: Path) -> dict[str, Any]:
    if not p.exists():  # a device, FIFO or folder exists: read_text refuses it by name
        raise UserError("config.file_not_found", "config file {path} not found: pass an existing .yaml file, e.g. "
                        "configs/quickstart.yaml", path=p)
    try:
        source = read_text(p)
        raw = yaml.load(source, Loader=SAFE_LOADER) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError("config.bad_yaml", "config file {path} is not valid YAML: {detail}",
                        path=p, detail=str(e).splitlines()[0]) from None
    except ValueError as e:
        raise _yaml_value_error(text("config.where_file", "config file {path}", path=p), source, e) from None
    except RecursionError:
        raise UserError("config.yaml_too_nested", "config file {path} is nested too deeply; a run config has two "
                        "levels", path=p) from None
    if not isinstance(raw, dict):
        raise UserError("config.yaml_not_mapping", "config file {path} must hold a mapping (model:, data:, train:, "
                        "...), not {kind}", path=p, kind=type(raw).__name__)
    return raw


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(cfg.to_yaml(), encoding="utf-8")


def field_help(section: str, name: str) -> str:
    """The docstring written under a field, for UI help text and `--help`."""
    cls = SECTIONS.get(section, RunConfig)
    return _field_docs(cls).get(name, "")


def _field_docs(cls: type) -> dict[str, str]:
    """Read the string literal placed right after each field assignment in the class body."""
    tree = ast.parse(inspect.getsource(cls).lstrip())
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = nxt.value.value
    return docs
