"""The TC / AR segmentation task through its public interfaces: data module, model, evaluation, the command.

Small generated data (25 x 37, an odd grid, 10 dates, 3 of them labelled twice) in temporary folders;
every test runs in seconds on two CPU cores.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import xarray as xr
from sklearn.metrics import accuracy_score, jaccard_score, precision_score, recall_score

from climateml.cli import main
from climateml.data.climatenet import SegmentationDataModule
from climateml.data.climatenet_labels import class_weights_from_counts
from climateml.data.synthetic.climatenet import generate_climatenet
from climateml.errors import ConfigError, DataError
from climateml.evaluation import predict
from climateml.evaluation.base import VERDICT_KEY, variables
from climateml.metrics.segmentation import CLASS_NAMES, confusion_matrix, scores_from_confusion
from climateml.models.segmentation import SegmentationModel

torch.set_num_threads(1)
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "segmentation.yaml")
NAME = re.compile(r"^data-(\d{4}-\d{2}-\d{2})-01-1_(\d+)\.nc$")
NLAT, NLON = 25, 37  # odd on purpose: not a multiple of any power of 2
CHANNELS = ["TMQ", "U850", "V850", "PSL"]
SMALL_NET = dict(depth=2, width=8)


@pytest.fixture(scope="module")
def seg_dir(tmp_path_factory) -> Path:
    """10 dates on a 25 x 37 grid, 3 of them labelled twice; read-only (copy it before corrupting anything)."""
    out = tmp_path_factory.mktemp("climatenet_small")
    generate_climatenet(out, n_dates=10, nlat=NLAT, nlon=NLON, n_double_labelled=3, seed=1, progress=False)
    return out


@pytest.fixture
def seg_copy(seg_dir, writable_copy) -> Path:
    return writable_copy(seg_dir)


def _files_by_date(directory: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in sorted(directory.iterdir()):
        m = NAME.match(p.name)
        if m:
            out.setdefault(m.group(1), []).append(p)
    return out


def _dm(data_dir, **kw) -> SegmentationDataModule:
    kw = {"channels": CHANNELS, "batch_size": 4, **kw}
    dm = SegmentationDataModule(str(data_dir), **kw)
    dm.setup()
    return dm


def _trainer(max_epochs: int, **kw) -> L.Trainer:
    kw = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
          "enable_model_summary": False, **kw}
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, **kw)


# ---------------------------------------------------------------- splits and labellings


def test_split_is_by_date_never_by_file(seg_dir):
    by_date = _files_by_date(seg_dir)
    double = {d for d, files in by_date.items() if len(files) == 2}
    assert len(by_date) == 10 and len(double) == 3
    for labellings in ("extra", "merge"):
        dm = _dm(seg_dir, val_fraction=0.2, test_fraction=0.2, labellings=labellings)
        splits = {s: dm.dates(s) for s in ("train", "val", "test")}
        assert [len(v) for v in splits.values()] == [6, 2, 2]
        assert sorted(sum(splits.values(), [])) == sorted(by_date)  # every date once, in one split
        assert max(splits["train"]) < min(splits["val"]) <= max(splits["val"]) < min(splits["test"])  # chronological
        # the items of each split hold only files of that split's dates, every labelling of a date on one side
        for split in ("train", "val", "test"):
            files = {f for snap, _ in dm.dataset(split).items for f in snap.files}
            assert files == {f for d in splits[split] for f in by_date[d]}
        assert dm.dates("predict") == splits["test"]

    # a double-labelled date forced into validation: both its files go there, none to training
    d = sorted(double)[0]
    dm = _dm(seg_dir, val_dates=[d, d], test_fraction=0.2)
    assert dm.dates("val") == [d] and d not in dm.dates("train") + dm.dates("test")
    train_files = {f for snap, _ in dm.train_dataset.items for f in snap.files}
    assert not train_files & set(by_date[d])
    assert len(dm.val_dataset) == 1  # scored once, on the merged labels
    # a date written without zero padding is the same date (a string comparison would select none, or others)
    year, month, day = (int(v) for v in d.split("-"))
    assert _dm(seg_dir, val_dates=[f"{year}-{month}-{day}"] * 2, test_fraction=0.2).dates("val") == [d]


def test_a_date_in_two_configured_splits_is_an_error(seg_dir):
    dates = sorted(_files_by_date(seg_dir))
    with pytest.raises(ConfigError, match=rf"{dates[4]}.*data-{dates[4]}-01-1_0\.nc.*(train|val).*(val|test)"):
        _dm(seg_dir, train_dates=[dates[0], dates[4]], val_dates=[dates[4], dates[6]], test_dates=[dates[7], dates[9]])
    with pytest.raises(ConfigError, match="train_dates"):
        _dm(seg_dir, train_dates=["1900-01-01", "1900-12-31"])  # a period holding no date is named too


def test_labellings_extra_vs_merge(seg_dir):
    by_date = _files_by_date(seg_dir)
    double = sorted(d for d, files in by_date.items() if len(files) == 2)
    extra = _dm(seg_dir, labellings="extra", val_fraction=0.2, test_fraction=0.2)
    merge = _dm(seg_dir, labellings="merge", val_fraction=0.2, test_fraction=0.2)
    train_dates = extra.dates("train")
    n_files = sum(len(by_date[d]) for d in train_dates)
    assert len(extra.train_dataset) == n_files > len(train_dates) == len(merge.train_dataset)
    for d in double:
        if d not in train_dates:
            continue
        a, b = (xr.load_dataset(f)["LABELS"].values for f in by_date[d])
        assert (a != b).any()
        # extra: each expert labelling is its own training target
        targets = [extra.train_dataset.labels(i) for i, (snap, _) in enumerate(extra.train_dataset.items) if snap.date == d]
        assert len(targets) == 2 and np.array_equal(targets[0], a) and np.array_equal(targets[1], b)
        # merge: the per-pixel majority; a tie keeps the feature (TC before AR before background)
        i = [snap.date for snap, _ in merge.train_dataset.items].index(d)
        tie = np.where((a == 1) | (b == 1), 1, 2)
        np.testing.assert_array_equal(merge.train_dataset.labels(i), np.where(a == b, a, tie))
    # validation and test always score the merged labels, once per date
    for split in ("val", "test"):
        assert len(extra.dataset(split)) == len(extra.dates(split))


# ---------------------------------------------------------------- statistics


def test_normalisation_and_class_weights_come_from_training_files_only(seg_dir):
    by_date = _files_by_date(seg_dir)
    dm = _dm(seg_dir, val_fraction=0.2, test_fraction=0.2, class_weighting="inverse_sqrt")
    stats = dm.spec.statistics
    train = [xr.load_dataset(by_date[d][0]) for d in dm.dates("train")]
    everything = [xr.load_dataset(files[0]) for files in by_date.values()]
    for i, c in enumerate(CHANNELS):
        values = np.stack([ds[c].values.astype(np.float64) for ds in train])
        assert stats["x_mean"][i].item() == pytest.approx(values.mean(), rel=1e-5)
        assert stats["x_std"][i].item() == pytest.approx(values.std(), rel=1e-4)
        all_values = np.stack([ds[c].values.astype(np.float64) for ds in everything])
        assert stats["x_mean"][i].item() != pytest.approx(all_values.mean(), rel=1e-7)
    # class weights from the training masks: every labelling of a training date counts ("extra")
    counts = sum(np.bincount(xr.load_dataset(f)["LABELS"].values.ravel(), minlength=3)
                 for d in dm.dates("train") for f in by_date[d])
    np.testing.assert_allclose(stats["class_weights"].numpy(), class_weights_from_counts(counts, "inverse_sqrt").numpy(),
                               rtol=1e-6)
    assert stats["class_weights"][1] > stats["class_weights"][2] > stats["class_weights"][0]  # rare TC weighs most
    np.testing.assert_allclose(stats["class_pixel_fraction"].numpy(), counts / counts.sum(), rtol=1e-6)
    flat = _dm(seg_dir, val_fraction=0.2, test_fraction=0.2, class_weighting="none")
    assert flat.spec.statistics["class_weights"].tolist() == [1.0, 1.0, 1.0]


def test_checkpoint_carries_the_normalisation_and_predicts_the_same(seg_dir, tmp_path):
    L.seed_everything(0)
    dm = _dm(seg_dir)
    model = SegmentationModel(dm.spec, **SMALL_NET)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, monitor="val_mean_iou", mode="max")
    trainer = _trainer(2, enable_checkpointing=True, callbacks=[ckpt])
    trainer.fit(model, dm)
    reloaded = SegmentationModel.load_from_checkpoint(ckpt.best_model_path, map_location="cpu")  # no data module
    for name in ("x_mean", "x_std", "class_weights"):
        assert torch.equal(getattr(reloaded, name), dm.spec.statistics[name])
    assert reloaded.x_std.min() > 0 and reloaded.hparams.width == SMALL_NET["width"]
    model.load_state_dict(torch.load(ckpt.best_model_path, weights_only=True)["state_dict"])
    a, b = predict(model, dm, accelerator="cpu")["test"], predict(reloaded, dm, accelerator="cpu")["test"]
    xr.testing.assert_allclose(a["probability"], b["probability"], rtol=1e-5, atol=1e-6)
    xr.testing.assert_equal(a["LABELS"], b["LABELS"])
    # the inputs are in physical units: a model given the fields standardised by hand agrees
    x = dm.test_dataset[0]["x"][None]
    reloaded.eval()
    with torch.no_grad():
        expect = reloaded.net((x - reloaded.x_mean[:, None, None]) / reloaded.x_std[:, None, None])
        torch.testing.assert_close(reloaded(x), expect)


def test_xarray_out_keeps_the_input_coordinates_and_units(seg_dir, monkeypatch):
    dm = _dm(seg_dir, val_fraction=0.2, test_fraction=0.2)
    src = xr.load_dataset(_files_by_date(seg_dir)[dm.dates("test")[0]][0])
    fields = dm.fields("test", ["TMQ", "PSL"])
    assert fields["TMQ"].dims == ("time", "lat", "lon") and list(fields["time"].values) == dm.dates("test")
    assert fields["TMQ"].attrs["units"] == "kg/m2" and fields["PSL"].attrs["units"] == "Pa"
    # the attributes were read once: a batch's fields (the streaming evaluation's) open no file through xarray
    monkeypatch.setattr(sys.modules[type(dm).__module__], "open_dataset", None)
    assert dm.fields("test", ["PSL"], [1])["PSL"].attrs["units"] == "Pa"
    with pytest.raises(DataError, match=r"variable\(s\) \['NOPE'\] missing"):
        dm.fields_layout(["NOPE"])
    np.testing.assert_array_equal(fields["TMQ"].isel(time=0), src["TMQ"].isel(time=0))
    logits = torch.randn(2, 3, NLAT, NLON)
    out = dm.to_xarray(logits, "test")["test"]
    np.testing.assert_array_equal(out["lat"], src["lat"])
    np.testing.assert_array_equal(out["lon"], src["lon"])
    np.testing.assert_array_equal(out["LABELS"], logits.argmax(1).numpy())
    np.testing.assert_allclose(out["probability"].sel(**{"class": "tc"}), logits.softmax(1)[:, 1].numpy(), rtol=1e-6)
    with pytest.raises(DataError, match="do not fit"):
        dm.to_xarray(torch.randn(3, 3, NLAT, NLON), "test")


# ---------------------------------------------------------------- augmentation


def _find_window(x, raw, flip_channels):
    """(top, first column, flipped) of the wrapped window of ``raw`` (C, lat, lon) that ``x`` (C, h, w) is."""
    _, h, w = x.shape
    nlat, nlon = raw.shape[-2:]
    for flipped in (False, True):
        for top in range(nlat - h + 1):
            for left in range(nlon):
                window = raw[:, top:top + h][:, :, (left + np.arange(w)) % nlon]
                if flipped:
                    window = window[:, ::-1].copy()
                    window[flip_channels] *= -1
                if np.array_equal(window, x):
                    return top, left, flipped
    return None


def test_crops_and_flips_move_fields_and_masks_together(seg_dir):
    dm = _dm(seg_dir, crop=[16, 20], flip_lat=True, labellings="merge")
    ds = dm.train_dataset
    raw_x = [xr.load_dataset(snap.files[0])[CHANNELS].to_array().values[:, 0] for snap, _ in ds.items]
    raw_y = [ds.labels(i) for i in range(len(ds))]
    torch.manual_seed(0)
    wrapped = flipped = 0
    for draw in range(24):
        i = draw % len(ds)
        item = ds[i]
        x, y = item["x"].numpy(), item["y"].numpy()
        assert x.shape == (4, 16, 20) and y.shape == (16, 20) and x.dtype == np.float32 and y.dtype == np.int64
        where = _find_window(x, raw_x[i], flip_channels=[CHANNELS.index("V850")])
        assert where is not None, "the crop is not a (wrapped, possibly flipped) window of the file's fields"
        top, left, flip = where
        window = raw_y[i][top:top + 16][:, (left + np.arange(20)) % NLON]
        np.testing.assert_array_equal(y, window[::-1] if flip else window)  # the mask went with the fields
        wrapped += left + 20 > NLON
        flipped += flip
    assert wrapped > 0 and flipped > 0 and flipped < 24
    # validation and test see whole, untouched fields
    np.testing.assert_array_equal(dm.val_dataset[0]["x"].numpy(),
                                  xr.load_dataset(dm.val_dataset.items[0][0].files[0])[CHANNELS].to_array().values[:, 0])


def test_whole_field_training_samples_shift_in_longitude_only(seg_dir):
    dm = _dm(seg_dir, labellings="merge", flip_lat=False)
    snap, _ = dm.train_dataset.items[0]
    raw = xr.load_dataset(snap.files[0])["TMQ"].values[0]
    torch.manual_seed(1)
    shifts = set()
    for _ in range(6):
        x = dm.train_dataset[0]["x"][0].numpy()
        k = next(k for k in range(NLON) if np.array_equal(np.roll(raw, -k, axis=-1), x))
        shifts.add(k)
    assert len(shifts) > 1
    fixed = _dm(seg_dir, labellings="merge", flip_lat=False, shift_lon=False)
    np.testing.assert_array_equal(fixed.train_dataset[0]["x"][0].numpy(), raw)


# ---------------------------------------------------------------- model and scores


def test_any_grid_size_and_the_model_overfits_a_tiny_set(seg_dir):
    """No augmentation, merged labels: predictions on the training dates must approach their labels."""
    L.seed_everything(0)
    dm = _dm(seg_dir, labellings="merge", flip_lat=False, shift_lon=False, batch_size=2, class_weighting="none")
    assert dm.spec.input_shape == (4, NLAT, NLON) and dm.spec.output_shape == (3, NLAT, NLON)
    model = SegmentationModel(dm.spec, depth=2, width=16, lr=3e-3, loss={"cross_entropy": 1.0, "dice": 1.0})
    truth = dm.truth("train")["train"]["LABELS"]

    def train_iou():
        pred = predict(model, dm, "train", accelerator="cpu")["train"]
        assert pred["LABELS"].shape == (6, NLAT, NLON) and pred["lat"].size == NLAT
        return scores_from_confusion(confusion_matrix(pred["LABELS"], truth, 3))

    before = train_iou()
    _trainer(60).fit(model, dm)
    after = train_iou()
    assert after["mean_iou"] > max(0.85, before["mean_iou"] + 0.3)
    assert after["iou_ar"] > 0.85 and after["iou_tc"] > 0.6


def test_logged_scores_come_from_one_confusion_matrix_over_the_split(seg_dir):
    L.seed_everything(0)
    dm = _dm(seg_dir, val_fraction=0.3, test_fraction=0.2, batch_size=2)  # 3 validation dates: batches of 2 and 1
    model = SegmentationModel(dm.spec, **SMALL_NET, lr=1e-2)
    trainer = _trainer(3)
    trainer.fit(model, dm)
    logged = trainer.validate(model, dm, verbose=False)[0]
    pred = predict(model, dm, "val", accelerator="cpu")["val"]["LABELS"]
    truth = dm.truth("val")["val"]["LABELS"]
    expect = scores_from_confusion(confusion_matrix(pred, truth, 3))
    for name in ("mean_iou", *[f"{k}_{c}" for k in ("iou", "precision", "recall") for c in CLASS_NAMES]):
        value = expect[name] if expect[name] == expect[name] else 0.0  # NaN (class absent everywhere) is logged as 0
        assert logged[f"val_{name}"] == pytest.approx(value, abs=1e-6), name
    # not a mean of per-batch scores
    per_batch = [scores_from_confusion(confusion_matrix(pred.isel(time=s), truth.isel(time=s), 3))["iou_ar"]
                 for s in (slice(0, 2), slice(2, 3))]
    assert expect["iou_ar"] != pytest.approx(np.mean(per_batch), abs=1e-6)


def test_bf16_mixed_precision_trains_on_cpu(seg_dir):
    L.seed_everything(0)
    dm = _dm(seg_dir)
    model = SegmentationModel(dm.spec, **SMALL_NET, lr=1e-2)
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        before = model.criterion(model.eval()(batch["x"]), batch["y"]).item()
    trainer = _trainer(4, precision="bf16-mixed")
    trainer.fit(model, dm)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())  # master weights
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.eval()(batch["x"])
    assert logits.dtype == torch.bfloat16  # the forward pass did run in bf16
    assert model.criterion(logits.float(), batch["y"]).item() < before
    assert np.isfinite(trainer.callback_metrics["val_mean_iou"].item())


# ---------------------------------------------------------------- the command


def test_fit_writes_metrics_figures_and_predict_writes_netcdf(seg_dir, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "pred"
    common = ["--data.data_dir", str(seg_dir), "--trainer.logger.init_args.save_dir", str(runs),
              "--trainer.enable_progress_bar", "false", "--model.init_args.depth", "2", "--model.init_args.width", "4",
              "--data.init_args.crop", "[]"]
    assert main(["fit", "--config", CONFIG, *common, "--trainer.max_epochs", "2"]) == 0
    run = runs / "segmentation" / "version_0"
    m = json.loads((run / "metrics.json").read_text())
    assert set(variables(m)) == {"LABELS"} and set(m["LABELS"]) == {"model", "heuristic"}
    v = m[VERDICT_KEY]["LABELS"][0]  # who won on the headline score, mean IoU (higher is better)
    best = max(m["LABELS"], key=lambda e: m["LABELS"][e]["mean_iou"])
    assert (v["score"], v["better"], v["best"]) == ("mean_iou", "higher", best)
    assert v["model_margin"] == pytest.approx(m["LABELS"]["model"]["mean_iou"] - m["LABELS"]["heuristic"]["mean_iou"])
    keys = {"iou_background", "iou_tc", "iou_ar", "mean_iou",
            *[f"{k}_{c}" for k in ("precision", "recall") for c in CLASS_NAMES]}
    for scores in m["LABELS"].values():
        assert keys <= set(scores)
        assert all(0.0 <= scores[k] <= 1.0 for k in keys if scores[k] == scores[k])
    figures = {p.name: p.stat().st_size for p in (run / "figures").iterdir()}
    assert figures["metrics.png"] > 10_000 and figures["learning_curves.png"] > 10_000
    masks = [n for n in figures if n.startswith("masks_")]
    assert masks and all(figures[n] > 20_000 for n in masks)
    ckpt = next((run / "checkpoints").glob("best-*.ckpt"))

    # the test predictions score exactly as metrics.json says
    preds = xr.open_dataset(run / "test_predictions_test.nc")
    truth = xr.concat([xr.load_dataset(_files_by_date(seg_dir)[str(d)][0])["LABELS"] for d in preds["time"].values],
                      dim="time")
    model_scores = scores_from_confusion(confusion_matrix(preds["LABELS"].sel(model="model").values, truth.values, 3))
    assert model_scores["iou_ar"] == pytest.approx(m["LABELS"]["model"]["iou_ar"], abs=1e-9)
    # every score of both models against scikit-learn on the flattened labels. metrics.json keeps an
    # undefined score (0 / 0) as NaN where sklearn reports zero_division (0 here; jaccard_score takes no
    # NaN), so a NaN must sit exactly where sklearn's denominator is empty, and mean_iou skips those classes
    y_true = truth.values.ravel()
    labels = [0, 1, 2]
    for name in ("model", "heuristic"):
        y_pred = preds["LABELS"].sel(model=name).transpose(*truth.dims).values.ravel()
        assert y_pred.shape == y_true.shape
        in_true, in_pred = np.isin(labels, y_true), np.isin(labels, y_pred)
        ref = {kind: (fn(y_true, y_pred, labels=labels, average=None, zero_division=0), defined)
               for kind, fn, defined in (("iou", jaccard_score, in_true | in_pred),
                                         ("precision", precision_score, in_pred),
                                         ("recall", recall_score, in_true))}
        expect = {f"{kind}_{c}": float(v[i]) if ok[i] else float("nan")
                  for kind, (v, ok) in ref.items() for i, c in enumerate(CLASS_NAMES)}
        iou, ok = ref["iou"]
        expect["mean_iou"] = float(iou[ok].mean()) if ok.any() else float("nan")
        expect["accuracy"] = float(accuracy_score(y_true, y_pred))
        scores = {k: v for k, v in m["LABELS"][name].items() if k != "ensemble_size"}  # a count, not a score
        assert set(scores) == set(expect), name
        for key, value in scores.items():
            if expect[key] != expect[key]:
                assert value != value, (name, key)  # undefined: stored as NaN, not sklearn's 0
            else:
                assert value == pytest.approx(expect[key], abs=1e-9), (name, key)
    rc = main(["predict", "--config", CONFIG, *common, "--ckpt_path", str(ckpt),
               "--trainer.callbacks+=climateml.callbacks.NetCDFPredictionWriter",
               f"--trainer.callbacks.output_dir={out}"])
    assert rc == 0
    ds = xr.open_dataset(out / "predictions_test.nc")
    src = xr.open_dataset(_files_by_date(seg_dir)[str(ds["time"].values[0])][0])
    assert ds["LABELS"].dims == ("time", "lat", "lon") and ds["probability"].dims == ("time", "class", "lat", "lon")
    np.testing.assert_array_equal(ds["lat"], src["lat"])
    np.testing.assert_array_equal(ds["lon"], src["lon"])
    assert list(ds["class"].values) == list(CLASS_NAMES) and ds["lat"].attrs["units"] == "degrees_north"
    np.testing.assert_allclose(ds["probability"].sum("class"), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(ds["LABELS"], ds["probability"].argmax("class"))
    np.testing.assert_array_equal(ds["LABELS"], preds["LABELS"].sel(model="model"))


# ---------------------------------------------------------------- bad input


def _rewrite(path: Path, change) -> None:
    ds = xr.load_dataset(path)
    change(ds).to_netcdf(path)


def _first_train_file(directory: Path) -> Path:
    return _files_by_date(directory)[min(_files_by_date(directory))][0]


def _last_file(directory: Path) -> Path:
    return _files_by_date(directory)[max(_files_by_date(directory))][0]


def _without_labels(ds):
    return ds.drop_vars("LABELS")


def _label_out_of_classes(ds):
    ds["LABELS"][3, 4] = 7
    return ds


def _missing_channel(ds):
    return ds.drop_vars("V850")


def _other_grid(ds):
    return ds.assign_coords(lat=ds["lat"] + 0.5)


def _nan_field(ds):
    ds["TMQ"][0, 5, 6] = np.nan
    return ds


@pytest.mark.parametrize("where", [_first_train_file, _last_file], ids=["train file", "test file"])
@pytest.mark.parametrize("change, expect", [
    (_without_labels, "no LABELS variable"),
    (_label_out_of_classes, r"LABELS has values \[7\] outside the classes"),
    (_missing_channel, r"channel\(s\) \['V850'\] missing"),
    (_other_grid, "grid differs"),
    (_nan_field, "'TMQ' has 1 NaN"),
], ids=["no labels", "label values", "missing channel", "grid", "nan"])
def test_bad_input_is_a_data_error_naming_the_file(seg_copy, where, change, expect):
    bad = where(seg_copy)
    _rewrite(bad, change)
    with pytest.raises(DataError, match=rf"{re.escape(str(bad))}: .*{expect}"):
        dm = _dm(seg_copy)  # grids and training files are checked when the data module is set up ...
        for split in ("train", "val", "test"):  # ... the other files when they are read
            for i in range(len(dm.dataset(split))):
                dm.dataset(split)[i]


def test_cli_reports_bad_data_in_one_line(seg_copy, tmp_path, cli_error):
    bad = _first_train_file(seg_copy)
    _rewrite(bad, _nan_field)
    rc, lines = cli_error(["fit", "--config", CONFIG, "--data.data_dir", str(seg_copy),
                           "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("climateml: error:") and str(bad) in lines[0], lines
    dates = sorted(_files_by_date(seg_copy))
    rc, lines = cli_error(["fit", "--config", CONFIG, "--data.data_dir", str(seg_copy), "--data.val_dates",
                           f"[{dates[0]}, {dates[1]}]", "--data.test_dates", f"[{dates[1]}, {dates[2]}]",
                           "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("climateml: error:") and dates[1] in lines[0], lines


def test_attribution_of_a_class_score_keeps_the_grid(seg_dir):
    """`inputs_xarray` feeds climateml.attribution: maps of the TC score on (time, channel, lat, lon) with the
    files' coordinates and channel names."""
    from climateml.attribution import attribute
    from climateml.attribution.targets import class_score

    dm = _dm(seg_dir)
    dm.setup()
    model = SegmentationModel(dm.spec, depth=1, width=4)
    x = dm.inputs_xarray("test").isel(time=slice(0, 2))
    assert x.dims == ("time", "channel", "lat", "lon") and list(x["channel"].values) == dm.spec.inputs
    np.testing.assert_array_equal(x["lat"].values, dm.truth("test")["test"]["lat"].values)
    a = attribute(model, x, "saliency", target=class_score(1, region={"lat": (5, 35)}))
    assert a.dims == x.dims and all(np.array_equal(a[d].values, x[d].values) for d in x.dims)
    assert np.isfinite(a.values).all()
