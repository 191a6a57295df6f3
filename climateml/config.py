"""Task configs (configs/*.yaml) from Python: the same callbacks, logger and evaluation as ``climateml fit``.

Notebooks and scripts build their Trainer from the task's YAML instead of copying its callbacks, so a
change to the config reaches every way of running the task.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from climateml.errors import ConfigError


def load_config(path: str | Path) -> dict:
    """The YAML at ``path`` as a dict; a ConfigError naming the file if it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})".splitlines()[0]) from err
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (trainer, data, model ...)")
    return config


def instantiate(spec: Any, **overrides) -> Any:
    """An object from ``{"class_path": "pkg.Class", "init_args": {...}}`` (nested specs too); other values as they are."""
    if isinstance(spec, list):
        return [instantiate(s) for s in spec]
    if not (isinstance(spec, dict) and "class_path" in spec):
        return spec
    module_name, _, class_name = spec["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"class_path {spec['class_path']!r} cannot be imported ({err})") from err
    args = {k: instantiate(v) for k, v in (spec.get("init_args") or {}).items()}
    return cls(**{**args, **overrides})


def build_trainer(config: str | Path | dict, **overrides) -> L.Trainer:
    """The Trainer of a task config: its ``trainer:`` section (callbacks and logger included), then ``overrides``.

    ``overrides`` replace whole keys, e.g. ``max_epochs=5``, ``logger=False`` or ``enable_progress_bar=False``;
    ``logger_save_dir=...`` and ``logger_name=...`` move the config's logger instead of replacing it.
    """
    config = load_config(config) if not isinstance(config, dict) else config
    section = copy.deepcopy(config.get("trainer", {}))
    logger_args = {k.removeprefix("logger_"): overrides.pop(k) for k in list(overrides) if k.startswith("logger_")}
    if logger_args and isinstance(section.get("logger"), dict):
        section["logger"].setdefault("init_args", {}).update(logger_args)
    section.update(overrides)
    kwargs = {k: instantiate(v) for k, v in section.items()}
    return L.Trainer(**kwargs)


def build_evaluation(config: str | Path | dict, **overrides):
    """The config's ``evaluation:`` object (e.g. TemperatureEvaluation), with ``overrides`` of its init_args."""
    config = load_config(config) if not isinstance(config, dict) else config
    if "evaluation" not in config:
        raise ConfigError("the config has no `evaluation:` section")
    return instantiate(config["evaluation"], **overrides)
