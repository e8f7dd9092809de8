"""Configs in files: YAML overrides on top of a profile (`--config FILE`, CONFIG=FILE), the whole config written back
as a commented YAML file (`python -m helpers config`, each checkpoint's config.yml), and saved run configs read
across versions (fields added since). Imports: config."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

from .config import Config, ConfigError, check_value, field_types
from .config import get_config as profile_config


def get_config(profile: str | None = None, /, config_file=None, **overrides) -> Config:
    """The preset of `profile` (default: $PROFILE, else "tiny"), then a YAML file's overrides (`config_file`, default:
    $CONFIG — how the notebooks and `make demo CONFIG=FILE` get one), then `section__field=value` overrides (--set)."""
    config_file = config_file or os.environ.get("CONFIG") or None
    return profile_config(profile, **{**(config_file_overrides(config_file) if config_file else {}), **overrides})


# Fields added to a section after runs were saved, each with the value that reproduces those runs: a saved run config
# (or a recorded chain's settings) without one reads as having it, so a new option does not turn every kept run into
# "a run of another config" that must be trained again.
ADDED_FIELDS = {"dpo": {"loss_type": "sigmoid"}, "eval": {"sampling_memory": None, "compiled_sampling": False}}


def with_added_fields(saved: dict) -> dict:
    """A saved run config or settings record, completed with the fields added since it was saved (ADDED_FIELDS)."""
    return {k: {**ADDED_FIELDS[k], **v} if k in ADDED_FIELDS and isinstance(v, dict) else v for k, v in saved.items()}


def config_file_overrides(path) -> dict:
    """A YAML file of overrides on top of a profile (`--config FILE`, CONFIG=FILE) → get_config's keyword overrides.
    Sections are mappings of fields (`dpo:` → `beta: 0.2`); the Config's own fields (`restart: true`) stand at the
    top. Read with yaml.safe_load (a tag such as !!python/object is refused, never constructed); anything that is not
    a mapping of known names, or a value of the wrong type or range, fails in one line naming the file, the line, the
    key and what is allowed."""
    import yaml
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot be read ({err.strerror or type(err).__name__})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)      # nodes with their lines, for the messages
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(f"config file {path}: {where}not readable YAML ({problem})") from None
    line = lambda node: f"line {node.start_mark.line + 1}"
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: {line(root)}: expected a mapping of sections (e.g. `dpo:` with "
                          f"`beta: 0.2` under it), found {type(data).__name__}")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    overrides = {}
    for key_node, value_node in root.value:
        key = key_node.value
        if key not in sections or key == "profile":
            allowed = ", ".join(name for name in sections if name != "profile")
            why = ("the profile is chosen with --profile (or PROFILE=…), not in the file" if key == "profile"
                   else f"unknown section or field {key!r}; allowed: {allowed}")
            raise ConfigError(f"config file {path}: {line(key_node)}: {why}")
        section_class = type(getattr(Config(), key))
        if not dataclasses.is_dataclass(section_class):                 # a field of the Config itself (restart: …)
            overrides[key] = data[key]
            checked_value(path, line(value_node), Config, key, data[key])
            continue
        if not isinstance(data[key], dict):
            raise ConfigError(f"config file {path}: {line(value_node)}: section {key!r} must be a mapping of its "
                              f"fields (e.g. `{key}:` then `  seed: 1`), not {type(data[key]).__name__}")
        fields = [f.name for f in dataclasses.fields(section_class)]
        for field_node, item_node in value_node.value:
            name = field_node.value
            if name not in fields:
                raise ConfigError(f"config file {path}: {line(field_node)}: unknown field {key}.{name!r}; the fields "
                                  f"of {key}: {', '.join(fields)}")
            checked_value(path, line(item_node), section_class, name, data[key][name])
            overrides[f"{key}__{name}"] = data[key][name]
    return overrides


def checked_value(path, where: str, cls: type, name: str, value) -> None:
    """check_value with the config file and line in its message."""
    try:
        check_value(cls, name, value)
    except ConfigError as err:
        hint = ""
        if isinstance(value, str) and float in field_types(cls)[name][0]:
            try:
                float(value)
                hint = " (YAML reads 1e-5 as text: write 1.0e-5)"
            except ValueError:
                pass
        raise ConfigError(f"config file {path}: {where}: {err}{hint}") from None


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in this file's source (the text after `#` on its line and the comment lines under it),
    for the commented starting file `python -m helpers config` prints; inherited fields from the parent class."""
    import inspect
    import re
    comments = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        current = None
        for text in inspect.getsource(klass).splitlines():
            field_line = re.match(r"^    (\w+): [^#]*?(?:#\s?(.*))?$", text)
            more = re.match(r"^\s{5,}#\s?(.*)$", text)
            if field_line:
                current = field_line.group(1)
                comments[current] = (field_line.group(2) or "").strip()
            elif more and current:
                comments[current] = (comments[current] + " " + more.group(1).strip()).strip()
            else:
                current = None
    return comments


def config_yaml(cfg: Config, commented: bool = True) -> str:
    """The whole config as a YAML file of the shape `--config FILE` reads: every section and field with its value
    (and, `commented`, the field's comment from this file above it) — saved as config.yml beside each checkpoint's
    run record, and printed as a starting file by `python -m helpers config --profile P`."""
    import textwrap
    import yaml
    value_text = lambda v: yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
    lines = [f"# profile {cfg.profile}: overrides on top of it (python -m helpers … --config FILE; CONFIG=FILE for the",
             "# notebooks and make demo). Every value below is the profile's own: delete what you keep as it is."]
    top, sections = [], []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "profile":
            continue
        (sections if dataclasses.is_dataclass(value) else top).append((f.name, value))

    def entry(indent: str, cls: type, name: str, value) -> list[str]:
        note = field_comments(cls).get(name, "") if commented else ""
        wrapped = textwrap.wrap(note, 110 - len(indent) - 2) if note else []
        plain = json.loads(json.dumps(value, default=str))        # tuples → lists, as --set and the run configs
        return [f"{indent}# {w}" for w in wrapped] + [f"{indent}{name}: {value_text(plain)}"]
    for name, value in top:
        lines += entry("", type(cfg), name, value)
    for name, section in sections:
        lines.append(f"{name}:")
        for f in dataclasses.fields(section):
            lines += entry("  ", type(section), f.name, getattr(section, f.name))
    return "\n".join(lines) + "\n"
