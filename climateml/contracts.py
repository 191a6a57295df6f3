"""What callers may ask of a DataModule beyond :class:`~climateml.data.base.ClimateDataModule`: one protocol per
task-specific need, checked once, by the caller, with :func:`require`.

Every DataModule declares the shared members (``build``, ``spec``, ``layout``, ``to_xarray``, ``truth``,
``inputs_xarray``, and ``batch_to_xarray``, ``batch_truth`` of :class:`BatchData`) as a
:class:`~climateml.data.base.ClimateDataModule`; a task's evaluation that needs more
names it here as a ``typing.Protocol`` (runtime checkable) and calls ``require(datamodule, Protocol, "who")`` once:
a DataModule without those members is one clear error naming them, instead of an ``AttributeError`` deep in a
run or a silent ``hasattr`` fallback. A task's DataModule lists the protocols it provides in ``PROTOCOLS``; they are
checked when it is instantiated (:func:`check_provides`, run after its ``__init__`` through :class:`PostInit`).
"""

from __future__ import annotations

import functools
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import xarray as xr

from climateml.errors import ConfigError


@runtime_checkable
class NowcastData(Protocol):
    """Windows of past frames -> future frames (the nowcast evaluation's persistence and optical-flow baselines)."""

    n_out: int

    def past_frames(self, split: str) -> np.ndarray:
        """(windows, n_in, y, x) [mm/h] of ``split``: what the baselines extrapolate from."""


@runtime_checkable
class FieldData(Protocol):
    """Raw input fields by name (the segmentation evaluation's heuristic baseline and its mask figures)."""

    def fields(self, split: str, names: Sequence[str] | None = None) -> xr.Dataset:
        """The named input fields of ``split``'s samples in physical units, on their coordinates."""


@runtime_checkable
class TabularData(Protocol):
    """Named input columns and in-memory tensors (the temperature evaluation fits its baselines on them)."""

    feature_names: list[str]

    def tensors(self, split: str) -> dict[str, torch.Tensor]:
        """``{"x": inputs, "y": targets}`` of every sample of ``split`` (predict: ``x`` only), physical units."""


# ---- one batch at a time: what the streaming evaluation (climateml.evaluation.streaming) calls ----
@runtime_checkable
class BatchData(Protocol):
    """What the streaming evaluator calls on a DataModule, one batch of its loader at a time.

    ``indices`` are the positions, in the split, of the batch's samples (this rank's shard of the split's
    loader, in order); the values are in physical units, as :meth:`to_xarray` gives them for a whole split.
    """

    def dataloader(self, split: str, shuffle: bool = False, distributed: bool = False): ...

    def batch_to_xarray(self, values, split: str, indices: Sequence[int], batch: Mapping) -> dict[str, xr.Dataset]:
        """The model's outputs for the samples ``indices`` of ``split``: {group: Dataset}, as ``to_xarray``."""

    def batch_truth(self, batch: Mapping, split: str, indices: Sequence[int]) -> dict[str, xr.Dataset]:
        """The observed values of the batch: {group: Dataset}, as ``truth``."""


@runtime_checkable
class SegmentationBatchData(BatchData, Protocol):
    """A segmentation DataModule, one batch at a time: the heuristic reads the batch's raw fields."""

    def fields(self, split: str, channels: Sequence[str] | None = None, indices: Sequence[int] | None = None) -> xr.Dataset:
        """The raw fields ``channels`` of the samples ``indices`` of ``split`` (physical units)."""


@runtime_checkable
class NowcastBatchData(BatchData, Protocol):
    """A nowcasting DataModule, one batch at a time: the baselines extrapolate the batch's past frames."""

    n_out: int

    def batch_past_frames(self, batch: Mapping) -> np.ndarray:
        """(windows, n_in, y, x) [mm/h] of the batch: what persistence and optical flow extrapolate."""


def members(protocol: type) -> list[str]:
    """The members a protocol declares (attributes and methods), with those of the protocols it extends first, in
    the order written."""
    names: list[str] = []
    for cls in reversed(protocol.__mro__):
        if cls is object or cls.__module__ == "typing":  # Protocol, Generic
            continue
        names += list(vars(cls).get("__annotations__", {}))
        names += [k for k, v in vars(cls).items() if callable(v) and not k.startswith("_")]
    return list(dict.fromkeys(names))


def require(obj, protocol: type, who: str) -> None:
    """Check once that ``obj`` has every member of ``protocol``; a ConfigError naming the missing ones otherwise.

    ``who``: the caller, in the error (e.g. "evaluation NowcastEvaluation")."""
    if isinstance(obj, protocol):
        return
    missing = [m for m in members(protocol) if not hasattr(obj, m)]
    raise ConfigError(f"{who} needs a DataModule with {', '.join(members(protocol))} ({protocol.__name__}); "
                      f"{type(obj).__name__} has no {', '.join(missing) or 'such members'}")


def check_properties(cls: type, base: type, properties: Sequence[str]) -> None:
    """``properties`` of ``cls`` (a subclass of ``base``) are properties, not methods: a TypeError naming the class
    and the members otherwise. (A member left undefined is Python's own error at instantiation, from ``abc``:
    "Can't instantiate abstract class <class> with abstract methods <members>".)"""
    wrong = [p for p in properties if not isinstance(getattr(cls, p, None), property)]
    if wrong:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} defines {', '.join(wrong)} as a method: a "
                        f"{base.__name__} declares {', '.join(properties)} as properties")


def check_provides(obj, protocols: Sequence[type]) -> None:
    """``obj`` (just constructed) has every member of each protocol its class says it provides: a TypeError naming
    the class, the protocol and the missing members otherwise. Class members (methods, properties) are looked up
    on the class, without running them; attributes on the instance."""
    for protocol in protocols:
        missing = [m for m in members(protocol)
                   if m not in vars(obj) and not any(m in vars(c) for c in type(obj).__mro__)]
        if missing:
            raise TypeError(f"{type(obj).__module__}.{type(obj).__qualname__} provides {protocol.__name__} (its "
                            f"PROTOCOLS) but has no {', '.join(missing)}")


def then_post_init(init):
    """``init`` wrapped so that, when it is the outermost ``__init__`` of an instance (not one reached through
    ``super().__init__``), ``self._post_init`` runs after it has returned, with the arguments it was given."""
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        depth = self.__dict__.get("_init_depth", 0)
        self.__dict__["_init_depth"] = depth + 1
        try:
            init(self, *args, **kwargs)
        finally:
            self.__dict__["_init_depth"] = depth
        if depth == 0:
            del self.__dict__["_init_depth"]
            self._post_init(init, args, kwargs)

    __init__._post_init_wrapper = True
    return __init__


class PostInit:
    """Mixin: ``self._post_init(init, args, kwargs)`` runs once the outermost ``__init__`` of an instance has
    returned, so hooks and checks see every attribute the subclass set (no "set it before ``super().__init__``"
    rule). Each subclass's own ``__init__`` is wrapped when the class is defined (:func:`then_post_init`; its
    signature stays visible to ``inspect`` and the command line)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_post_init_wrapper", False):
            cls.__init__ = then_post_init(init)

    def _post_init(self, init, args: tuple, kwargs: dict) -> None:
        """Runs after the outermost ``__init__``; nothing here."""
