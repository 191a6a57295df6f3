"""The generic evaluator: predict the split (batch by batch, or whole through ``Trainer.predict``), score the
model and the task's baselines with the same code, and write ``metrics.json``, prediction NetCDF and figures
into a run directory.

A task subclasses :class:`Evaluation` and fills in the hooks — :meth:`~Evaluation.baselines` and
:meth:`~Evaluation.batch_baselines`; :meth:`~Evaluation.statistics` and :meth:`~Evaluation.scores_from_statistics`
(the default :meth:`~Evaluation.score_variable` scores through them, so both paths below share the code);
:meth:`~Evaluation.figures` and :meth:`~Evaluation.streamed_figures`; :meth:`~Evaluation.summary_figures`
(``metrics.png`` and ``learning_curves.png``, drawn once per run) — and is chosen in the task's YAML under
``evaluation:``. ``metrics.json`` always has one shape:
``{variable: {"model": {...}, "<baseline>": {...}}}``, plus one reserved top-level key, ``"verdict"``
(:data:`VERDICT_KEY`, never a variable's name): who won on each headline score, see :func:`verdict`. Readers
that iterate over the variables skip it (:func:`variables`).

A task whose DataModule serves its batches (:meth:`Evaluation.streams`) is scored batch by batch
(:meth:`Evaluation.run_streaming`, :mod:`climateml.evaluation.streaming`): on every DDP rank, each its own
shard; sufficient statistics summed over the batches and ranks, so every score is the score of the whole
evaluation set (never a mean of per-batch or per-rank scores); predictions appended to the run's files batch
by batch; figures read back the few samples they show. Otherwise (:meth:`Evaluation.run_in_memory`) the split
is predicted, held and scored whole on one process.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import lightning as L
import numpy as np
import torch
import xarray as xr

from climateml import plotting
from climateml.contracts import BatchData
from climateml.data.base import distributed_world
from climateml.errors import ConfigError
from climateml.grid import area_weights
from climateml.writers import write_cf, write_text


#: the reserved top-level key of metrics.json holding the verdicts: {variable: [verdict, ...]} (see :func:`verdict`)
VERDICT_KEY = "verdict"
DIRECTIONS = ("lower", "higher")


def variables(metrics: Mapping) -> dict:
    """metrics.json without its verdict: ``{variable: {entry: scores}}``."""
    return {k: v for k, v in metrics.items() if k != VERDICT_KEY}


def verdict(scores: Mapping[str, Mapping[str, float]], score: str, better: str = "lower",
            model: str = "model") -> dict | None:
    """Who won on one score: the best entry, the runner-up and the margin, and one sentence saying it.

    Args:
        scores: one variable's entries as in metrics.json, ``{"model": {score: value}, "<baseline>": {...}}``.
        score: the headline score compared (e.g. "nrmse_total", "mean_iou", "csi_1.0").
        better: "lower" or "higher": which way the score is better.
        model: the entry that is the learned model.

    Returns None when no entry has a finite ``score``; otherwise a dict of plain types::

        {"score", "better", "best", "best_value", "runner_up", "runner_up_value",
         "margin",        # |best - runner-up| (0 for a tie; None when only one entry has the score)
         "model_value",   # the model's score (None if it has none)
         "model_won",     # the model is strictly better than every baseline
         "model_margin",  # the model's lead over the best baseline, positive when the model is better,
                          # negative when a baseline beats it, in the score's units (None without both)
         "text"}          # the sentence the run prints, e.g. "pattern_scaling beats the model on nrmse_total ..."

    Entries with a missing or non-finite score take no part.
    """
    if better not in DIRECTIONS:
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    sign = 1.0 if better == "higher" else -1.0
    valid = {name: float(s[score]) for name, s in scores.items()
             if isinstance(s, Mapping) and isinstance(s.get(score), (int, float)) and np.isfinite(s[score])}
    if not valid:
        return None
    ranked = sorted(valid, key=lambda n: (-sign * valid[n], n != model))  # best first; a tie goes to the model
    best = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    m_val = valid.get(model)
    others = [n for n in ranked if n != model]
    lead = None if m_val is None or not others else sign * (m_val - valid[others[0]])
    out = {"score": score, "better": better, "best": best, "best_value": valid[best], "runner_up": runner,
           "runner_up_value": None if runner is None else valid[runner],
           "margin": None if runner is None else abs(valid[best] - valid[runner]),
           "model_value": m_val, "model_won": lead is not None and lead > 0, "model_margin": lead}
    way = f"{score}, {better} is better"
    if m_val is None:
        out["text"] = f"{best} is best on {way}: {valid[best]:.4g}; the model has no {score}"
    elif not others:
        out["text"] = f"the model alone has {score}: {m_val:.4g} (no baseline to compare)"
    elif lead > 0:
        out["text"] = (f"the model wins on {way}: {m_val:.4g} against {others[0]}'s {valid[others[0]]:.4g}, "
                       f"better by {lead:.4g}{_relative(lead, valid[others[0]])}")
    elif lead == 0:
        out["text"] = f"the model ties with {others[0]} on {way}: both {m_val:.4g}"
    else:
        out["text"] = (f"the baseline {others[0]} BEATS the model on {way}: {valid[others[0]]:.4g} against the "
                       f"model's {m_val:.4g}, better by {-lead:.4g}{_relative(-lead, m_val)}")
    return out


def _relative(diff: float, reference: float) -> str:
    return f" ({100 * diff / abs(reference):.1f}%)" if reference else ""


def predict(model: torch.nn.Module, datamodule, split: str = "test", accelerator: str = "auto",
            precision=None) -> dict[str, xr.Dataset]:
    """Run ``model`` over a split through ``Trainer.predict`` and return xarray on the data's coordinates.

    One Dataset per group of the split (e.g. per scenario), from ``datamodule.to_xarray``. A private
    Trainer (one device, no logger, no callbacks) is used, so a run's prediction writers do not fire.
    """
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # no "GPU available ..." banner for every member scored
    try:
        trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[])
        outputs = trainer.predict(model, dataloaders=datamodule.dataloader(split), return_predictions=True)
    finally:
        quiet.setLevel(level)
    return datamodule.to_xarray(torch.cat([o.float() for o in outputs]), split)


def _device(accelerator: str) -> torch.device:
    """The device the streaming evaluation predicts on: this rank's GPU for "gpu" / "cuda" / "auto" when there is one."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _module_device(module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _on_device(batch: Mapping, device: torch.device, module) -> dict:
    """The batch on ``device``, its floating-point tensors in the dtype of ``module``'s weights (float64 under
    ``precision: 64-true``, as the Trainer's precision plugin converts them)."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    return {k: v.to(device, dtype=dtype if v.is_floating_point() else v.dtype) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def cell_weights(truth: xr.DataArray) -> xr.DataArray:
    """The area weight of every value of ``truth``: cos(lat) where it has a ``lat`` dim, else 1 (projected grids)."""
    w = area_weights(truth)
    return xr.ones_like(truth, dtype=np.float64) if w is None else xr.broadcast(w, truth)[0].astype(np.float64)


def error_sums(pred: xr.DataArray, truth: xr.DataArray) -> dict[str, float]:
    """Sums over every value given where both are finite, with w the area weight of its cell (:func:`cell_weights`)
    and e = pred - truth: ``weight`` (sum of w), ``error`` (w e), ``abs_error`` (w |e|), ``squared_error`` (w e^2).
    They add up over batches and DDP ranks to the sums over the whole evaluation set (:func:`error_scores`)."""
    pred, truth = pred.astype(np.float64), truth.astype(np.float64)
    valid = pred.notnull() & truth.notnull()
    w = cell_weights(truth).where(valid, 0.0)
    e = (pred - truth).where(valid, 0.0)
    return {"weight": float(w.sum()), "error": float((w * e).sum()), "abs_error": float((w * abs(e)).sum()),
            "squared_error": float((w * e ** 2).sum())}


def error_scores(sums: Mapping[str, float]) -> dict[str, float]:
    """Area-weighted RMSE, MAE and bias (pred - truth) over the whole evaluation set, from :func:`error_sums`
    summed over it (not a mean of per-batch scores); NaN when no value was finite."""
    weight = float(sums["weight"])
    if weight <= 0:
        return {"rmse": float("nan"), "mae": float("nan"), "bias": float("nan")}
    return {"rmse": float(np.sqrt(sums["squared_error"] / weight)), "mae": float(sums["abs_error"] / weight),
            "bias": float(sums["error"] / weight)}


def _members(datasets: Sequence[dict[str, xr.Dataset]]) -> dict[str, xr.Dataset]:
    """Per group, the members' predictions stacked on a ``member`` dim."""
    return {g: xr.concat([d[g] for d in datasets], dim="member").assign_coords(member=np.arange(len(datasets)))
            for g in datasets[0]}


class Evaluation:
    """Scores a trained model (or ensemble) against the task's baselines on one split.

    Args:
        split: the DataModule split scored ("test").
        summary_keys: scores printed after ``climateml fit``.
        comparison_keys: scores drawn in the model-vs-baselines bar figure.
        write_predictions: write ``<split>_predictions_<group>.nc`` (model and baselines, CF metadata).
        make_figures: draw the task's figures under ``figures/``.
        higher_is_better: the comparison keys for which higher is better (the rest: lower, a bias: closer
            to 0); null: skill scores and overlaps (r2, csi, iou, fss ...) by the rule of
            :func:`climateml.plotting.better_direction`.
        headline: the scores that decide who won, each with its direction, e.g. ``{nrmse_total: lower}`` or
            ``{csi_1.0: higher, mae: lower}``: for every variable and headline score, the run prints which
            entry was best and by how much (saying so in words when a baseline beats the model) and writes
            the same under metrics.json's ``"verdict"`` key (:func:`verdict`).
    """

    def __init__(self, split: str = "test", summary_keys: list[str] = ["rmse"], comparison_keys: list[str] = ["rmse"],
                 write_predictions: bool = True, make_figures: bool = True, higher_is_better: list[str] | None = None,
                 headline: dict[str, str] = {"rmse": "lower"}):
        bad = {k: v for k, v in dict(headline).items() if v not in DIRECTIONS}
        if bad or not headline:
            raise ConfigError(f"evaluation.headline must map score names to 'lower' or 'higher' (which way is "
                              f"better), got {dict(headline)}")
        self.headline = {str(k): str(v) for k, v in dict(headline).items()}
        self.split = split
        self.summary_keys = list(summary_keys)
        self.comparison_keys = list(comparison_keys)
        self.write_predictions = write_predictions
        self.make_figures = make_figures
        self.higher_is_better = None if higher_is_better is None else list(higher_is_better)
        self.run_state: dict = {}  # what hooks keep for the rest of one run (e.g. a figure's inputs); emptied after it

    # ---- hooks a task fills in ----
    def baselines(self, datamodule) -> dict[str, dict[str, xr.Dataset]]:
        """{baseline name: {group: predictions}} on the split, in the same form as the model's."""
        return {}

    def combine_members(self, members: xr.Dataset) -> xr.Dataset:
        """The ensemble's prediction from its members (dim ``member``): the mean."""
        return members.mean("member", keep_attrs=True)

    def score_variable(self, pred: xr.DataArray, truth: xr.DataArray, variable: str) -> dict[str, float]:
        """Scores of one variable in one group: :meth:`scores_from_statistics` of :meth:`statistics`, the same
        code as the streaming evaluation (by default area-weighted RMSE, MAE and bias)."""
        return self.scores_from_statistics(self.statistics(pred, truth, variable), variable)

    def score(self, pred: xr.Dataset, truth: xr.Dataset) -> dict[str, dict[str, float]]:
        """{variable: scores} for one group; by default :meth:`score_variable` for every variable of ``truth``."""
        return {v: self.score_variable(pred[v], truth[v], v) for v in truth.data_vars}

    def member_scores(self, members: xr.Dataset, truth: xr.Dataset) -> dict[str, dict[str, float]]:
        """Extra model scores that need the members (spread, member RMSE); none by default."""
        return {}

    def aggregate(self, per_group: list[dict]) -> dict:
        """One set of scores from the groups' (e.g. scenarios'): the mean of each score present in all of them;
        nested scores (e.g. ``by_lead_time``) averaged the same way, key by key."""
        keys = [k for k in per_group[0] if all(k in d for d in per_group)]
        return {k: self.aggregate([d[k] for d in per_group]) if all(isinstance(d[k], Mapping) for d in per_group)
                else float(np.mean([d[k] for d in per_group])) for k in keys}

    def figures(self, fig_dir: Path, group: str, truth: xr.Dataset, predictions: dict[str, xr.Dataset],
                members: xr.Dataset, scores: dict[str, dict[str, dict]]) -> None:
        """The task's figures of one group; ``predictions`` holds "model" and each baseline, ``scores`` their
        scores in this group ({name: {variable: scores}}, as computed for ``metrics.json``); the DataModule
        being evaluated is ``self.datamodule``."""

    def loss_label(self, models: Sequence[torch.nn.Module]) -> str:
        """What the training loss is, as the learning curves' y label (e.g. "MSE on standardised tas")."""
        return "loss (the training objective)"

    def summary_figures(self, fig_dir: Path, result: dict, histories: Mapping[str, Path],
                        models: Sequence[torch.nn.Module]) -> None:
        """The run's summary figures, drawn once after scoring: ``metrics.png`` (the model against the
        baselines on ``comparison_keys``, each panel saying which way is better) and, when there are
        ``histories`` (name -> an existing CSVLogger ``metrics.csv``), ``learning_curves.png``."""
        plotting.save(plotting.plot_metric_comparison(result, self.comparison_keys, self.higher_is_better),
                      fig_dir / "metrics.png")
        if histories:
            plotting.save(plotting.plot_learning_curves(histories, self.loss_label(models)),
                          fig_dir / "learning_curves.png")

    # ---- hooks of the streaming evaluation (a task that streams fills them in; see :meth:`streams`) ----
    def streams(self, datamodule) -> bool:
        """Whether this task scores ``datamodule`` batch by batch (:meth:`run_streaming`): when the DataModule
        serves its batches as xarray (:class:`~climateml.contracts.BatchData`); if not, :meth:`run` holds the
        split in memory (:meth:`run_in_memory`)."""
        return isinstance(datamodule, BatchData)

    def batch_baselines(self, datamodule, batch: Mapping, indices: Sequence[int]) -> dict[str, dict[str, xr.Dataset]]:
        """{baseline name: {group: predictions}} for one batch (the samples ``indices`` of the split)."""
        return {}

    def statistics(self, pred: xr.DataArray, truth: xr.DataArray, variable: str) -> dict[str, np.ndarray]:
        """Sufficient statistics of one variable on a part of the evaluation set: arrays that add up over
        batches and ranks to the statistics of the whole set (:meth:`scores_from_statistics` turns them into
        scores). By default the area-weighted error sums of :func:`error_sums`."""
        return error_sums(pred, truth)

    def scores_from_statistics(self, statistics: Mapping[str, np.ndarray], variable: str) -> dict:
        """One variable's scores from its statistics summed over the whole evaluation set; by default RMSE, MAE
        and bias (:func:`error_scores`)."""
        return error_scores(statistics)

    def member_statistics(self, members: xr.DataArray, truth: xr.DataArray, variable: str) -> dict[str, np.ndarray]:
        """Sufficient statistics of the members (dim ``member``) of an ensemble of more than one, added to the
        model's (:meth:`scores_from_statistics` sees them beside its own); none by default."""
        return {}

    def observe(self, sums, group: str, truth: xr.Dataset, indices: Sequence[int]) -> None:
        """Note what the figures will need of a batch (e.g. :meth:`Sums.pick` of the rainiest sample)."""

    def streamed_figures(self, fig_dir: Path, group: str, predictions: xr.Dataset, sums,
                         scores: dict[str, dict[str, dict]]) -> None:
        """The task's figures of one group, reading back only the samples they show from ``predictions`` (the
        written predictions, lazily, on a ``model`` dim); ``sums`` holds what :meth:`observe` picked."""

    # ---- the run ----
    def run(self, models: Sequence[torch.nn.Module], datamodule, run_dir: str | Path,
            histories: Mapping[str, str | Path] | None = None, accelerator: str = "auto",
            in_memory: bool = False) -> dict:
        """Score ``models`` (an ensemble of one or more) and the baselines; write metrics.json, predictions, figures.

        Batch by batch on every rank when the task streams this DataModule (:meth:`streams`,
        :meth:`run_streaming`), else with the whole split in memory on this process (:meth:`run_in_memory`).
        ``in_memory``: hold the whole split even when the task streams (the reference the streaming scores are
        checked against).
        """
        self.datamodule = datamodule  # for hooks that need the inputs (e.g. fields under a mask figure)
        self.run_state = {}
        datamodule.setup("test")
        try:
            if self.streams(datamodule) and not in_memory:
                return self.run_streaming(models, datamodule, Path(run_dir), histories, accelerator)
            return self.run_in_memory(models, datamodule, Path(run_dir), histories, accelerator)
        finally:
            self.run_state = {}  # what the hooks kept for this run's figures is not kept past it

    def run_in_memory(self, models, datamodule, run_dir: Path, histories, accelerator: str) -> dict:
        """The whole split's predictions, baselines and truth in memory, scored by :meth:`score` (called by
        :meth:`run`, which sets what the hooks use)."""
        members = _members([predict(m, datamodule, self.split, accelerator) for m in models])
        baselines = self.baselines(datamodule)
        truth = datamodule.truth(self.split)
        per_group: list[dict[str, dict[str, dict]]] = []
        for group, member_ds in members.items():
            preds = {"model": self.combine_members(member_ds), **{b: p[group] for b, p in baselines.items()}}
            scores = {name: self.score(pred, truth[group]) for name, pred in preds.items()}
            extra = self.member_scores(member_ds, truth[group])
            scores["model"] = {v: {**s, **extra.get(v, {})} for v, s in scores["model"].items()}
            per_group.append(scores)
            if self.write_predictions:
                write_cf(self._prediction_dataset(preds, member_ds), run_dir / f"{self.split}_predictions_{group}.nc",
                         title=self._title(group), group=group)
            if self.make_figures:
                self.figures(run_dir / "figures", group, truth[group], preds, member_ds, scores)
        return self._finish(per_group, models, run_dir, histories)

    def run_streaming(self, models, datamodule, run_dir: Path, histories, accelerator: str) -> dict:
        """Score batch by batch: every rank of a running process group takes its shard of the split's loader,
        predicts it with each member, computes the baselines of the batch, adds the sufficient statistics of
        every entry (:meth:`statistics`) and appends the predictions to its part store; the statistics are
        then summed over the ranks, so each score is that of the whole evaluation set. Rank 0 writes
        metrics.json, merges the predictions into ``<split>_predictions_<group>.nc`` and draws the figures
        from what was written; every rank returns the scores."""
        from climateml.evaluation.streaming import Sums, barrier
        from climateml.writers import PredictionParts

        world, rank = distributed_world()
        loader = datamodule.dataloader(self.split, distributed=True)
        sampler = loader.sampler
        # fewer samples than ranks: every rank's sampler holds them all, and rank 0 alone scores them
        shard = list(sampler.shard()) if world == 1 or sampler.sharded or rank == 0 else []
        parts = PredictionParts(run_dir / ".parts" / self.split, rank)
        parts.clear()
        barrier()  # no rank writes before rank 0 has cleared
        sums = Sums()
        device = _device(accelerator)
        states = [(m.training, _module_device(m)) for m in models]
        try:
            for m in models:
                m.eval().to(device)
            with torch.no_grad():
                start = 0
                for i, batch in enumerate(loader if shard else []):
                    n = len(next(iter(batch.values())))
                    indices = shard[start:start + n]
                    start += n
                    outputs = [m.predict_step(_on_device(batch, device, m), i).float().cpu() for m in models]
                    self._stream_batch(datamodule, batch, indices, outputs, sums, parts)
        finally:
            for m, (training, was) in zip(models, states):
                m.train(training).to(was)
        sums.all_reduce()
        barrier()  # every rank's parts are complete
        per_group: list[dict[str, dict[str, dict]]] = []
        groups = sorted({k[0] for k in sums.values})
        for group in groups:
            names = list(dict.fromkeys(k[1] for k in sums.values if k[0] == group))
            scores = {name: {v: self.scores_from_statistics(sums.group(group, name, v), v)
                             for v in dict.fromkeys(k[2] for k in sums.values if k[:2] == (group, name))}
                      for name in names}
            per_group.append(scores)
            if rank == 0 and self.write_predictions:
                parts.merge(group, run_dir / f"{self.split}_predictions_{group}.nc", self._title(group), group=group)
            if rank == 0 and self.make_figures:
                self.streamed_figures(run_dir / "figures", group, parts.open(group), sums, scores)
        result = self._finish(per_group, models, run_dir, histories, write=rank == 0)
        barrier()  # every rank is done with the parts
        parts.remove()
        return result

    def _stream_batch(self, datamodule, batch, indices, outputs, sums, parts) -> None:
        """One batch: the members' predictions, the baselines, their statistics and the part stores."""
        members = _members([datamodule.batch_to_xarray(o, self.split, indices, batch) for o in outputs])
        truth = datamodule.batch_truth(batch, self.split, indices)
        baselines = self.batch_baselines(datamodule, batch, indices)
        for group, member_ds in members.items():
            preds = {"model": self.combine_members(member_ds), **{b: p[group] for b, p in baselines.items()}}
            for name, pred in preds.items():
                for v in truth[group].data_vars:
                    sums.add((group, name, v), self.statistics(pred[v], truth[group][v], v))
            if member_ds.sizes["member"] > 1:
                for v in truth[group].data_vars:
                    sums.add((group, "model", v), self.member_statistics(member_ds[v], truth[group][v], v))
            self.observe(sums, group, truth[group], indices)
            if self.write_predictions or self.make_figures:  # the figures read the predictions back
                parts.append(group, self._prediction_dataset(preds, member_ds))

    def _finish(self, per_group: Sequence[dict[str, dict[str, dict]]], models, run_dir: Path, histories,
                write: bool = True) -> dict:
        """The groups' scores (each ``{name: {variable: scores}}``) aggregated (:meth:`aggregate`) into
        ``{variable: {name: scores}}``; metrics.json with the verdicts, and the summary figures."""
        by_variable: dict[str, dict[str, list]] = {}
        for scores in per_group:
            for name, of_name in scores.items():
                for variable, s in of_name.items():
                    by_variable.setdefault(variable, {}).setdefault(name, []).append(s)
        result = {v: {name: self.aggregate(s) for name, s in by.items()} for v, by in by_variable.items()}
        for by_name in result.values():
            by_name["model"]["ensemble_size"] = len(models)
        if not write:
            return result
        verdicts = self.verdicts(result)
        write_text(json.dumps({**result, VERDICT_KEY: verdicts}, indent=2, allow_nan=True), run_dir / "metrics.json")
        if self.make_figures:
            existing = {k: Path(v) for k, v in (histories or {}).items() if Path(v).exists()}
            self.summary_figures(run_dir / "figures", result, existing, models)
        return result

    def _title(self, group: str) -> str:
        return f"{self.split} predictions of the model and its baselines, {group}"

    def _prediction_dataset(self, preds: dict[str, xr.Dataset], members: xr.Dataset) -> xr.Dataset:
        """One group's predictions as written: every variable on a ``model`` dim (the model, then each baseline),
        plus the members as ``<variable>_members`` when there is more than one."""
        names = list(preds)
        shared = [v for v in preds["model"].data_vars if all(v in p.data_vars for p in preds.values())]
        out = xr.concat([preds[n][shared] for n in names], dim="model", coords="minimal", compat="override")
        out = out.assign_coords(model=names)
        only_model = [v for v in preds["model"].data_vars if v not in shared]  # e.g. class probabilities
        if only_model:
            out = out.merge(preds["model"][only_model].rename({v: f"{v}_model" for v in only_model}))
        if members.sizes["member"] > 1:
            out = out.merge(members.rename({v: f"{v}_members" for v in members.data_vars}), compat="override")
        return out

    def verdicts(self, result: Mapping) -> dict[str, list[dict]]:
        """{variable: [:func:`verdict` of each headline score the variable has]}, as written to metrics.json."""
        out = {}
        for variable, by_entry in variables(result).items():
            found = [verdict(by_entry, score, better) for score, better in self.headline.items()]
            out[variable] = [v for v in found if v is not None]
        return out

    def summary(self, result: dict) -> list[str]:
        """Lines printed after ``climateml fit``: the summary scores of the model and each baseline, then who won
        on each headline score, in words."""
        lines = []
        for variable, by_model in variables(result).items():
            for name, m in by_model.items():
                shown = ", ".join(f"{k} {m[k]:.4g}" for k in self.summary_keys if k in m)
                lines.append(f"  {variable} {name:>18}: {shown}")
        for variable, found in self.verdicts(result).items():
            lines += [f"  {variable}: {v['text']}" for v in found]
        return lines
