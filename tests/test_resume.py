"""Exact resume's own pieces (climateml.resume): the Lightning internals they read are where they expect them, a
moved one stops a fit with its name, and a resumed run keeps its checkpoint's training statistics when the
training files changed between the kill and the resume. (The kill-and-resume runs themselves:
test_scale_faults.py; the plateau counters: test_temperature_lab.py.)"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import xarray as xr

from climateml.config import instantiate, load_config
from climateml.models import TemperatureEmulator
from climateml.resume import IMPORTED_INTERNALS, ResumeCheckpoint, check_lightning_internals, internal

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "temperature.yaml"


def _task(data_dir: Path):
    """A tiny emulator on one training scenario (batches of 8: 9 optimiser steps per epoch)."""
    L.seed_everything(0)
    dm = instantiate(load_config(CONFIG)["data"], data_dir=str(data_dir), train_scenarios=["ssp370"],
                     test_scenarios=["ssp245"], synthesize_if_missing=False, batch_size=8)
    return dm, TemperatureEmulator(dm.spec, hidden_sizes=[8])


def _trainer(tmp_path: Path, max_steps: int, callbacks: list) -> L.Trainer:
    return L.Trainer(max_steps=max_steps, logger=False, default_root_dir=tmp_path, callbacks=callbacks,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=0, accelerator="cpu", devices=1)


class _Spy(L.Callback):
    """At every training step: the named Lightning internals are there, with a logged value to look into, and the
    stateful loader has handed out exactly the batches trained on (Lightning fetches none ahead)."""

    def __init__(self):
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log("spy", float(batch_idx), on_step=False, on_epoch=True)  # an epoch mean, as tasks log them
        assert trainer.fit_loop.epoch_loop._results, "no logged value to check"
        check_lightning_internals(trainer)
        assert trainer.train_dataloader.state_dict()["batches"] == batch_idx + 1
        self.steps += 1


def test_the_lightning_internals_resume_reads_are_there(small_climatebench, tmp_path):
    dm, model = _task(small_climatebench)
    spy = _Spy()
    _trainer(tmp_path, 3, [spy, ResumeCheckpoint(every_n_train_steps=2, dirpath=str(tmp_path))]).fit(model, dm)
    assert spy.steps == 3
    assert torch.load(tmp_path / "resume.ckpt", weights_only=True)["global_step"] == 3  # the end of training


@pytest.mark.parametrize("owner, name", [
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_save_last_checkpoint"),
    ("lightning.pytorch.loops.training_epoch_loop._TrainingEpochLoop", "_num_ready_batches_reached"),
])
def test_a_moved_lightning_internal_stops_the_fit_with_its_name(owner, name, small_climatebench, tmp_path,
                                                                 monkeypatch):
    module, cls = owner.rsplit(".", 1)
    monkeypatch.delattr(getattr(__import__(module, fromlist=[cls]), cls), name)
    dm, model = _task(small_climatebench)
    with pytest.raises(AssertionError, match=rf"Lightning internal moved: \S+\.{name} "):
        _trainer(tmp_path, 1, [ResumeCheckpoint(every_n_train_steps=1, dirpath=str(tmp_path))]).fit(model, dm)


def _build_then_setup(data_dir: Path) -> None:
    """What uses the imported internals: a task's construction (LightningCLI's given hyperparameters) and its setup
    with a non-persistent buffer (TemperatureEmulator's correction_columns) kept out of DDP's broadcast."""
    dm, model = _task(data_dir)
    model.setup("fit")
    assert model._ddp_params_and_buffers_to_ignore == ["correction_columns"]


@pytest.mark.parametrize("path", sorted(IMPORTED_INTERNALS))
def test_a_moved_imported_internal_fails_where_it_is_used_with_its_name(path, small_climatebench, monkeypatch):
    _build_then_setup(small_climatebench)  # there today, and used
    owner, name = path.rsplit(".", 1)
    monkeypatch.delattr(owner + "." + name)
    message = rf"Lightning internal moved: {path} \({name!r} is gone\)"
    with pytest.raises(AssertionError, match=message):
        internal(path)
    with pytest.raises(AssertionError, match=message):
        _build_then_setup(small_climatebench)


def test_resumed_run_keeps_its_checkpoint_statistics_when_the_data_changed(cb_copy, tmp_path):
    """Killed after 3 steps (its resume checkpoint), the training scenario's CO2 then doubled on disk: the resumed
    run's DataModule (built on the changed files, so its refitted statistics differ) ends with the checkpoint's
    statistics, in ``statistics`` and in ``spec``, as does the model."""
    dm, model = _task(cb_copy)
    _trainer(tmp_path, 3, [ResumeCheckpoint(every_n_train_steps=3, dirpath=str(tmp_path))]).fit(model, dm)
    checkpoint = torch.load(tmp_path / "resume.ckpt", weights_only=True)
    saved = checkpoint[type(dm).__qualname__]["statistics"]
    assert set(saved) == {"x_mean", "x_std", "y_mean", "y_std"}

    path = cb_copy / "inputs_ssp370.nc"
    with xr.open_dataset(path) as ds:
        changed = ds.load()
    changed["CO2"] = changed["CO2"] * 2
    changed.to_netcdf(path)

    dm, model = _task(cb_copy)
    refitted = {k: v.clone() for k, v in dm.statistics.items()}
    assert not torch.equal(refitted["x_mean"], saved["x_mean"]), "the change must move the refitted statistics"
    _trainer(tmp_path, 5, [ResumeCheckpoint(every_n_train_steps=3, dirpath=str(tmp_path))]).fit(
        model, dm, ckpt_path=str(tmp_path / "resume.ckpt"))
    spec = dm.spec.statistics
    for name, value in saved.items():
        assert torch.equal(dm.statistics[name], value), name
        assert torch.equal(spec[name], value), name
        assert torch.equal(getattr(model, name), value.float()), name


def test_a_resume_checkpoint_from_before_it_was_a_model_checkpoint_still_loads():
    """A run interrupted under the previous ResumeCheckpoint (its state: random states and early stopping's
    decision, none of ModelCheckpoint's) resumes: the per-process state is taken, nothing else is asked for."""
    callback = ResumeCheckpoint()
    callback.load_state_dict({"ranks": [{"rng": {"torch": torch.get_rng_state()}}], "should_stop": False})
    assert set(callback._restored) == {"rng"} and callback.last_model_path == ""


class _FailingEmulator(TemperatureEmulator):
    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 3:
            raise RuntimeError("a bug in step 4")
        return super().training_step(batch, batch_idx)


def test_an_exception_inside_a_step_leaves_the_last_periodic_checkpoint(small_climatebench, tmp_path):
    """A step that fails half-way is no state to resume from (its batch was handed out, its update not made): the
    file keeps the periodic checkpoint of step 2 (a pre-emption, between steps, is saved: test_scale_faults.py)."""
    dm, _ = _task(small_climatebench)
    model = _FailingEmulator(dm.spec, hidden_sizes=[8])
    with pytest.raises(RuntimeError, match="a bug in step 4"):
        _trainer(tmp_path, 6, [ResumeCheckpoint(every_n_train_steps=2, dirpath=str(tmp_path))]).fit(model, dm)
    assert torch.load(tmp_path / "resume.ckpt", weights_only=True)["global_step"] == 2


class _Crash(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 6:
            raise RuntimeError("crash")  # in a step: the file keeps the periodic checkpoint of step 4


def test_a_run_resumed_mid_epoch_with_loader_workers_ends_like_the_uninterrupted_one(small_climatebench, tmp_path):
    """Two DataLoader worker processes (persistent, forked): the restored loader state skips the epoch's first
    4 batches before the workers are handed any index, so the resumed run trains on the uninterrupted run's
    batches and ends with its weights (9 steps per epoch: the checkpoint of step 4 is mid-epoch)."""
    def run(name: str, callbacks: list, ckpt_path: str | None = None) -> dict:
        dm, model = _task(small_climatebench)
        dm.num_workers = 2
        trainer = _trainer(tmp_path / name, 12, [*callbacks, ResumeCheckpoint(every_n_train_steps=4,
                                                                              dirpath=str(tmp_path / name))])
        trainer.fit(model, dm, ckpt_path=ckpt_path)
        return model.state_dict()

    whole = run("whole", [])
    with pytest.raises(RuntimeError, match="crash"):
        run("killed", [_Crash()])
    checkpoint = tmp_path / "killed" / "resume.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 4
    resumed = run("killed", [], str(checkpoint))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
