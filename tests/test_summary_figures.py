"""The summary figures of an evaluation (``metrics.png``, ``learning_curves.png``): drawn once per run through
:meth:`Evaluation.summary_figures`, titled with the right direction (lower / higher is better) and labelled
with the loss the model trained on. Tiny generated data, no training: seconds."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402

from climateml import plotting  # noqa: E402
from climateml.evaluation import base  # noqa: E402
from climateml.evaluation.base import Evaluation  # noqa: E402
from climateml.evaluation.nowcasting import NowcastEvaluation  # noqa: E402
from climateml.evaluation.nowcasting import plot_learning_curves as nowcast_learning_curves  # noqa: E402
from climateml.evaluation.segmentation import SegmentationEvaluation, plot_training_history  # noqa: E402
from climateml.evaluation.temperature import TemperatureEvaluation  # noqa: E402

N_EPOCHS = 4


def _history(extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSVLogger-like history: a training row and a validation row per epoch; the best val_loss at epoch 2."""
    rows = []
    val = [0.9, 0.5, 0.3, 0.4]
    for e in range(N_EPOCHS):
        step = 10 * (e + 1) - 1
        rows.append({"epoch": e, "step": step, "train_loss": 1.0 / (e + 1)})
        rows.append({"epoch": e, "step": step, "val_loss": val[e], **{k: 0.2 + 0.1 * e for k in extra}})
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------- which way is better


@pytest.mark.parametrize("key", ["r2", "mean_iou", "iou_tc", "csi_1.0", "pod_5.0", "fss_8km", "precision_ar"])
def test_skill_keys_are_higher_is_better(key):
    assert plotting.better_direction(key) == "higher"


@pytest.mark.parametrize("key", ["rmse", "mae", "nrmse_total", "far_1.0", "member_rmse_mean"])
def test_error_keys_are_lower_is_better(key):
    assert plotting.better_direction(key) == "lower"


def test_bias_is_best_at_zero_and_the_keys_given_override_the_rule():
    assert plotting.better_direction("bias") == "closer to 0"
    assert plotting.better_direction("my_score", higher_is_better=["my_score"]) == "higher"
    assert plotting.better_direction("r2", higher_is_better=[]) == "lower"


# ---------------------------------------------------------------- the generic figures


def _metrics() -> dict:
    return {"tas": {"model": {"rmse": 0.2, "nrmse_total": 0.5, "r2": 0.9, "bias": 0.01},
                    "linear_baseline": {"rmse": 0.4, "nrmse_total": 0.8, "r2": 0.7, "bias": -0.03}}}


def test_metric_comparison_titles_say_which_way_is_better():
    errors = plotting.plot_metric_comparison(_metrics(), ["rmse", "nrmse_total"]).axes[0].get_title()
    assert "lower is better" in errors and "higher" not in errors
    skill = plotting.plot_metric_comparison(_metrics(), ["r2"]).axes[0].get_title()
    assert "higher is better" in skill and "lower" not in skill
    told = plotting.plot_metric_comparison(_metrics(), ["rmse"], higher_is_better=["rmse"]).axes[0].get_title()
    assert "higher is better" in told


def test_metric_comparison_marks_each_score_where_a_panel_mixes_directions():
    ax = plotting.plot_metric_comparison(_metrics(), ["rmse", "r2", "bias"]).axes[0]
    title = ax.get_title()
    assert "lower is better" in title and "higher is better" in title and "closer to 0 is better" in title
    marks = plotting.DIRECTION_MARKS
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"rmse {marks['lower']}", f"r2 {marks['higher']}",
                                                           f"bias {marks['closer to 0']}"]


def test_learning_curves_are_labelled_with_the_loss_and_mark_the_best_epoch():
    fig = plotting.plot_learning_curves({"model": _history()}, loss_label="MSE on standardised tas")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "MSE on standardised tas"
    best = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(best) == 1 and list(best[0].get_xdata()) == [2] and list(best[0].get_ydata()) == [0.3]
    assert "epoch 2, step 29" in best[0].get_label()


def test_task_learning_curves_share_the_loss_panel():
    history = _history(("val_mean_iou", "val_iou_tc", "val_iou_ar", "val_mae_mm_h", "train_mae_mm_h",
                        "val_mae_correction", "val_mae_optical_flow"))
    seg = plot_training_history({"model": history}, loss_label="loss: cross entropy + jaccard")
    ax_loss, ax_iou = seg.axes
    assert ax_loss.get_ylabel() == "loss: cross entropy + jaccard"
    # segmentation keeps the weights of the best mean IoU: marked there, not on the loss
    assert not [line for line in ax_loss.lines if line.get_marker() == "o"]
    assert [line for line in ax_iou.lines if line.get_marker() == "o"]
    now = nowcast_learning_curves({"model": history}, "logcosh")
    ax_loss, ax_mae = now.axes
    assert ax_loss.get_ylabel() == "logcosh"
    # nowcasting keeps the weights chosen by val_selection (optical flow unless a correction beat it): no loss
    # minimum is marked; MAE of training, of the nowcast given, of the correction and of optical flow alone
    assert not [line for line in ax_loss.lines if line.get_marker() == "o"]
    assert len(ax_mae.lines) == 4


def test_loss_labels_describe_each_task_loss():
    temperature = SimpleNamespace(spec=SimpleNamespace(outputs=["tas"]))
    assert TemperatureEvaluation().loss_label([temperature]) == "MSE on standardised tas"
    unet = SimpleNamespace(hparams={"loss": {"cross_entropy": 1.0, "dice": 0.5}})
    assert SegmentationEvaluation(heuristic=None).loss_label([unet]) == "loss: cross entropy + 0.5 dice"
    cnn = SimpleNamespace(hparams={"loss": "logcosh", "csi_weight": 0.5})
    assert NowcastEvaluation().loss_label([cnn]) == "logcosh + 0.5 (1 - soft CSI)"


# ---------------------------------------------------------------- one home in Evaluation.run


class _FakeData:
    """What :meth:`Evaluation.run` asks of a DataModule when ``predict`` is replaced: the split's truth (and,
    for the nowcasting baselines, the past frames: none here)."""

    def __init__(self, truth: dict[str, xr.Dataset]):
        self._truth = truth

    def setup(self, stage: str) -> None:
        pass

    def truth(self, split: str) -> dict[str, xr.Dataset]:
        return self._truth

    def past_frames(self, split: str) -> None:
        return None


def _run(evaluation: Evaluation, truth: xr.Dataset, prediction: xr.Dataset, tmp_path, monkeypatch,
         hparams: dict | None = None) -> list[tuple[str, list[str]]]:
    """Run ``evaluation`` on one model predicting ``prediction`` (``predict`` replaced: no Trainer) with a
    history file; returns every figure saved: (file name, y labels of its axes)."""
    monkeypatch.setattr(base, "predict", lambda model, datamodule, split, accelerator: {"test": prediction})
    saved = []
    save = plotting.save

    def recording_save(fig, path):
        saved.append((path.name, [ax.get_ylabel() for ax in fig.axes]))
        return save(fig, path)

    monkeypatch.setattr(plotting, "save", recording_save)
    history = tmp_path / "metrics.csv"
    _history(("val_mean_iou", "val_mae_mm_h")).to_csv(history, index=False)
    model = SimpleNamespace(hparams=hparams or {}, spec=SimpleNamespace(outputs=list(truth.data_vars)))
    evaluation.run([model], _FakeData({"test": truth}), tmp_path / "run",
                   histories={"model": history, "gone": tmp_path / "missing.csv"})
    return saved


def _counts(saved) -> dict[str, int]:
    names = [name for name, _ in saved]
    return {n: names.count(n) for n in ("metrics.png", "learning_curves.png")}


class _Counting(Evaluation):
    """A generic evaluation scoring RMSE, counting the calls of its summary hook."""

    calls = 0

    def score_variable(self, pred, truth, variable):
        return {"rmse": float(np.sqrt(((pred - truth) ** 2).mean())), "r2": 0.5}

    def summary_figures(self, fig_dir, result, histories, models):
        type(self).calls += 1
        assert set(histories) == {"model"}  # only the histories whose file exists
        super().summary_figures(fig_dir, result, histories, models)


def test_run_calls_the_summary_hook_once_and_draws_each_figure_once(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    truth = xr.Dataset({"tas": (("time", "lat", "lon"), rng.normal(size=(3, 2, 2)))})
    monkeypatch.setattr(_Counting, "calls", 0)  # a class counter: counted from 0 in every run of this test
    evaluation = _Counting(comparison_keys=["rmse", "r2"], write_predictions=False)
    saved = _run(evaluation, truth, truth + 0.1, tmp_path, monkeypatch)
    assert _Counting.calls == 1
    assert _counts(saved) == {"metrics.png": 1, "learning_curves.png": 1}
    assert dict(saved)["learning_curves.png"] == [Evaluation().loss_label([])]
    assert (tmp_path / "run" / "figures" / "metrics.png").stat().st_size > 0


@pytest.mark.parametrize("task", ["segmentation", "nowcasting"])
def test_task_summary_figures_replace_the_generic_ones(task, tmp_path, monkeypatch):
    """Segmentation and nowcasting draw their own metrics.png and learning_curves.png, once each, with
    their loss on the y axis; the generic figures are not drawn first."""
    rng = np.random.default_rng(0)
    if task == "segmentation":
        assert "run" not in vars(SegmentationEvaluation)
        monkeypatch.setattr(SegmentationEvaluation, "figures", lambda self, *args: None)  # masks: tested elsewhere
        labels = rng.integers(0, 3, size=(2, 4, 6))
        truth = xr.Dataset({"LABELS": (("time", "lat", "lon"), labels)})
        prob = rng.dirichlet(np.ones(3), size=(2, 4, 6)).transpose(0, 3, 1, 2)
        prediction = xr.Dataset({"probability": (("time", "class", "lat", "lon"), prob),
                                 "LABELS": (("time", "lat", "lon"), prob.argmax(1))})
        evaluation = SegmentationEvaluation(heuristic=None, write_predictions=False)
        hparams, loss_label = {"loss": {"cross_entropy": 1.0, "jaccard": 1.0}}, "loss: cross entropy + jaccard"
    else:
        assert "run" not in vars(NowcastEvaluation)
        monkeypatch.setattr(NowcastEvaluation, "figures", lambda self, *args: None)  # sequences: tested elsewhere
        coords = {"lead_time": np.array([5, 10], dtype="timedelta64[m]").astype("timedelta64[ns]"),
                  "y": np.arange(6.0), "x": np.arange(6.0)}
        rain = rng.gamma(0.5, 2.0, size=(3, 2, 6, 6))
        truth = xr.Dataset({"rain_rate": (("time", "lead_time", "y", "x"), rain)}, coords=coords)
        prediction = truth * 0.8
        evaluation = NowcastEvaluation(baselines=[], thresholds=[1.0], fss_scales_km=[1, 2], write_predictions=False)
        hparams, loss_label = {"loss": "logcosh"}, "logcosh"
    saved = _run(evaluation, truth, prediction, tmp_path, monkeypatch, hparams)
    assert _counts(saved) == {"metrics.png": 1, "learning_curves.png": 1}
    assert dict(saved)["learning_curves.png"][0] == loss_label


# ---------------------------------------------------------------- the scores a run writes


def test_aggregate_averages_nested_scores_key_by_key():
    groups = [{"mae": 1.0, "only_here": 3.0, "by_lead_time": {"5min": {"mae": 1.0}, "10min": {"mae": 2.0}}},
              {"mae": 3.0, "by_lead_time": {"5min": {"mae": 3.0}, "10min": {"mae": 4.0}}}]
    assert Evaluation().aggregate(groups) == {"mae": 2.0, "by_lead_time": {"5min": {"mae": 2.0}, "10min": {"mae": 3.0}}}
    assert Evaluation().aggregate(groups[:1]) == {k: v for k, v in groups[0].items()}


def _rain(rng, n_time: int = 3) -> xr.Dataset:
    coords = {"lead_time": np.array([5, 10], dtype="timedelta64[m]").astype("timedelta64[ns]"),
              "y": np.arange(6.0), "x": np.arange(6.0)}
    return xr.Dataset({"rain_rate": (("time", "lead_time", "y", "x"), rng.gamma(0.5, 2.0, size=(n_time, 2, 6, 6)))},
                      coords=coords)


@pytest.mark.parametrize("n_groups", [1, 2])
def test_nowcast_scores_keep_one_shape_and_the_figures_reuse_them(n_groups, tmp_path, monkeypatch):
    """metrics.json has ``by_lead_time`` and an int ``ensemble_size`` whatever the number of groups; the
    figures are handed the scores the run computed (no second scoring); nothing is kept after the run."""
    rng = np.random.default_rng(1)
    truth = {f"g{i}": _rain(rng) for i in range(n_groups)}
    monkeypatch.setattr(base, "predict",
                        lambda model, datamodule, split, accelerator: {g: t * 0.8 for g, t in truth.items()})
    handed = {}
    monkeypatch.setattr(NowcastEvaluation, "figures",
                        lambda self, fig_dir, group, truth, preds, members, scores: handed.update({group: scores}))
    evaluation = NowcastEvaluation(baselines=[], thresholds=[1.0, 5.0], fss_scales_km=[1, 2], write_predictions=False)
    calls = []
    score_variable = NowcastEvaluation.score_variable
    monkeypatch.setattr(NowcastEvaluation, "score_variable",
                        lambda self, *a: calls.append(1) or score_variable(self, *a))
    result = evaluation.run([SimpleNamespace(hparams={})], _FakeData(truth), tmp_path / "run")
    model = result["rain_rate"]["model"]
    assert list(model["by_lead_time"]) == ["5min", "10min"] and "csi_1.0" in model["by_lead_time"]["5min"]
    assert {"csi_1.0", "pod_5.0", "far_5.0", "fss_2km"} <= set(model)
    assert model["ensemble_size"] == 1 and isinstance(model["ensemble_size"], int)
    assert len(calls) == n_groups  # one scoring of the model per group, none for the figures
    assert set(handed) == set(truth) and "by_lead_time" in handed["g0"]["model"]["rain_rate"]
    assert evaluation.run_state == {}
