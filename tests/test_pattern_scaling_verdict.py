"""Pattern scaling against a hand computation; the emulator starts at it and stays at least as good on data from
other physics; every run's verdict (who won, by how much) for the three tasks' headline scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from climateml.cli import main
from climateml.data import ClimateBenchDataModule
from climateml.data.synthetic import PHYSICS, Grid, generate_climatebench, generate_record
from climateml.evaluation.base import VERDICT_KEY, Evaluation, variables, verdict
from climateml.models import PatternScaling, TemperatureEmulator

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "temperature.yaml")


# ---- pattern scaling by hand ----
def test_pattern_scaling_is_the_two_step_least_squares_fit():
    rng = np.random.default_rng(0)
    n, cells = 12, 3
    co2 = np.linspace(0.0, 100.0, n)
    w = np.array([0.2, 0.5, 0.3])
    tas = np.outer(0.02 * co2, [0.5, 1.0, 1.6]) + 0.1 * rng.standard_normal((n, cells))
    pr = 1e-6 * rng.standard_normal((n, cells)) + np.outer(co2, [1e-7, 2e-7, 0.0])
    ch4 = rng.standard_normal(n)  # a second input pattern scaling ignores
    x = torch.tensor(np.stack([ch4, co2], 1), dtype=torch.float32)
    y = torch.tensor(np.concatenate([tas, pr], 1), dtype=torch.float32)
    ps = PatternScaling.fit(x, y, torch.tensor(w, dtype=torch.float32), n_targets=2, co2_index=1)

    x_new = np.array([[0.3, 37.0], [-1.0, 150.0]])
    expected = []
    for block in (tas, pr):
        g = block @ w                                                        # global means
        (a, b), *_ = np.linalg.lstsq(np.stack([np.ones(n), co2], 1), g, rcond=None)  # step 1
        (alpha, beta), *_ = np.linalg.lstsq(np.stack([np.ones(n), g], 1), block, rcond=None)  # step 2, every cell
        g_new = a + b * x_new[:, 1]
        expected.append(alpha[None] + beta[None] * g_new[:, None])
        assert ps.global_slope[len(expected) - 1].item() == pytest.approx(b, rel=1e-4)
    got = ps(torch.tensor(x_new, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, np.concatenate(expected, 1), rtol=1e-4, atol=1e-10)
    # the prediction does not depend on the other input
    x_other = torch.tensor(x_new, dtype=torch.float32)
    x_other[:, 0] += 5.0
    np.testing.assert_allclose(ps(x_other).numpy(), got)


def test_emulator_starts_at_pattern_scaling_and_round_trips_it(small_climatebench):
    dm = ClimateBenchDataModule(str(small_climatebench), target=["tas", "pr"])
    model = TemperatureEmulator(dm.spec).eval()
    train = dm.dataset("train").tensors
    ps = PatternScaling.fit(train["x"], train["y"], dm.spec.statistics["cell_weights"], 2, 0)
    x = dm.dataset("test").tensors["x"]
    torch.testing.assert_close(model(x), ps(x))
    assert not torch.allclose(TemperatureEmulator(dm.spec, base="none")(x), ps(x))
    with pytest.raises(Exception, match="pattern_scaling needs CO2"):
        TemperatureEmulator(ClimateBenchDataModule(str(small_climatebench), inputs=["CH4"]).spec)


# ---- the default emulator on data it was not tuned on ----
@pytest.mark.parametrize("physics", ["regional", "saturating_aerosol", "record"])
def test_default_emulator_is_not_worse_than_pattern_scaling_on_other_physics(physics, tmp_path):
    """The lab's defaults (few steps here) on a small grid of other physics, and on a 1 x 1 record split in time:
    the correction starts at zero and early stopping keeps the best validation weights, so the model cannot end
    far from pattern scaling; a 2 % tolerance covers a correction that helped validation years slightly but not
    the test years."""
    data = tmp_path / "data"
    extra = []
    if physics == "record":
        generate_record(data)
        extra = ["--data.init_args.train_scenarios", "[record_train]", "--data.init_args.test_scenarios", "[record_test]"]
    else:
        generate_climatebench(data, grid=Grid(6, 8), physics=physics, progress=False,
                              scenarios=("historical", "ssp126", "ssp245", "ssp370", "ssp585", "hist-GHG", "hist-aer"))
    runs = tmp_path / "runs"
    assert main(["fit", "--config", CONFIG, "--data.init_args.data_dir", str(data), *extra,
                 "--trainer.logger.init_args.save_dir", str(runs), "--trainer.enable_progress_bar", "false",
                 "--trainer.max_steps", "150", "--evaluation.init_args.baselines", "[pattern_scaling]",
                 "--evaluation.init_args.make_figures", "false", "--evaluation.init_args.write_predictions", "false"]) == 0
    m = json.loads((runs / "temperature" / "version_0" / "metrics.json").read_text())
    model, ps = m["tas"]["model"]["nrmse_total"], m["tas"]["pattern_scaling"]["nrmse_total"]
    print(physics, "model", model, "pattern_scaling", ps)
    assert model <= 1.02 * ps, (physics, model, ps)
    v = m[VERDICT_KEY]["tas"][0]
    assert v["score"] == "nrmse_total" and v["model_value"] == model and v["best"] in ("model", "pattern_scaling")


def test_physics_variants_differ_from_the_default():
    from climateml.data.synthetic.climatebench import simulate

    base = simulate("ssp245", Grid(4, 6), 1, 0)[1]["tas"].values
    for name in ("regional", "saturating_aerosol", "noisy"):
        other = simulate("ssp245", Grid(4, 6), 1, 0, physics=PHYSICS[name])[1]["tas"].values
        assert np.abs(other - base).mean() > 0.05, name


# ---- the verdict, on hand-made scores of the three tasks ----
def test_verdict_temperature_baseline_beats_the_model():
    scores = {"model": {"nrmse_total": 0.30, "rmse": 0.2}, "pattern_scaling": {"nrmse_total": 0.20},
              "random_forest": {"nrmse_total": 0.25}, "linear_baseline": {"nrmse_total": float("nan")}}
    v = verdict(scores, "nrmse_total", "lower")
    assert v["best"] == "pattern_scaling" and v["runner_up"] == "random_forest"
    assert v["margin"] == pytest.approx(0.05) and v["model_margin"] == pytest.approx(-0.10) and not v["model_won"]
    assert "the baseline pattern_scaling BEATS the model" in v["text"] and "0.1" in v["text"]


def test_verdict_segmentation_model_wins_on_mean_iou():
    v = verdict({"model": {"mean_iou": 0.62}, "heuristic": {"mean_iou": 0.41}}, "mean_iou", "higher")
    assert v["best"] == "model" and v["model_won"] and v["model_margin"] == pytest.approx(0.21)
    assert v["text"].startswith("the model wins on mean_iou, higher is better") and "heuristic" in v["text"]


def test_verdict_nowcasting_two_headlines_and_the_summary_lines():
    result = {"rain_rate": {"model": {"csi_1.0": 0.50, "mae": 0.30}, "persistence": {"csi_1.0": 0.40, "mae": 0.35},
                            "optical_flow": {"csi_1.0": 0.55, "mae": 0.32}}}
    evaluation = Evaluation(headline={"csi_1.0": "higher", "mae": "lower"})
    csi, mae = evaluation.verdicts(result)["rain_rate"]
    assert (csi["best"], csi["runner_up"], not csi["model_won"]) == ("optical_flow", "model", True)
    assert csi["margin"] == pytest.approx(0.05)
    assert (mae["best"], mae["model_won"], mae["model_margin"]) == ("model", True, pytest.approx(0.02))
    lines = evaluation.summary(result)
    assert any("optical_flow BEATS the model on csi_1.0" in line for line in lines)
    assert any("the model wins on mae" in line for line in lines)


def test_verdict_edge_cases():
    assert verdict({"model": {"rmse": math.nan}}, "rmse") is None
    tie = verdict({"model": {"rmse": 1.0}, "b": {"rmse": 1.0}}, "rmse")
    assert tie["best"] == "model" and not tie["model_won"] and "ties" in tie["text"]
    with pytest.raises(ValueError):
        verdict({"model": {"rmse": 1.0}}, "rmse", "smaller")
    with pytest.raises(Exception, match="headline"):
        Evaluation(headline={"rmse": "down"})
    assert variables({"tas": {"model": {}}, VERDICT_KEY: {}}) == {"tas": {"model": {}}}


def test_skill_benchmark_script_prints_the_table(tmp_path):
    """benchmarks/temperature_skill.py (the README's results table) on a tiny grid and a short run."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "temperature_skill.py"
    out = subprocess.run([sys.executable, str(script), "--nlat", "4", "--nlon", "6", "--data-sets", "noisy",
                          "--work", str(tmp_path), "--", "--trainer.max_steps", "20",
                          "--evaluation.init_args.baselines", "[pattern_scaling, random_forest]",
                          "--evaluation.init_args.baseline_options", "{random_forest: {rf_options: {n_estimators: 10}}}",
                          "--evaluation.init_args.make_figures", "false", "--evaluation.init_args.write_predictions", "false"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    row = next(line for line in out.stdout.splitlines() if line.startswith("| noisy (4 x 6)"))
    m = json.loads(next((tmp_path / "runs_noisy").rglob("metrics.json")).read_text())["tas"]
    best = min(m, key=lambda e: m[e]["nrmse_total"])
    assert row.rstrip(" |").endswith(best) and f"{m['pattern_scaling']['nrmse_total']:.3f}" in row
    assert row.count("—") == 2  # the two baselines left out (Gaussian process, multiple linear regression)
