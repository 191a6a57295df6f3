"""TorchThreads: torch's CPU threads during a run, as the nowcasting config sets them, and the previous count
given back when the run ends."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from climateml.callbacks import TorchThreads
from climateml.config import instantiate, load_config
from climateml.errors import ConfigError

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "nowcasting.yaml"


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class _Probe(L.LightningModule):
    """A linear model that records torch's thread count at every step of each stage."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.threads: dict[str, set[int]] = {}

    def _step(self, stage: str, batch) -> torch.Tensor:
        self.threads.setdefault(stage, set()).add(torch.get_num_threads())
        return self.layer(batch[0]).pow(2).mean()

    def training_step(self, batch, _):
        return self._step("train", batch)

    def validation_step(self, batch, _):
        self._step("val", batch)

    def test_step(self, batch, _):
        self._step("test", batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=4)


def _trainer(callbacks) -> L.Trainer:
    return L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)


def test_the_nowcasting_config_trains_on_one_thread_and_gives_the_count_back(restore_threads):
    callbacks = load_config(CONFIG)["trainer"]["callbacks"]
    assert [cb["class_path"] for cb in callbacks if cb["class_path"].endswith(".TorchThreads")] == [
        "climateml.callbacks.TorchThreads"]
    (threads,) = [cb for cb in instantiate(callbacks) if isinstance(cb, TorchThreads)]
    torch.set_num_threads(3)
    model, trainer = _Probe(), _trainer([threads])
    trainer.fit(model, _loader(), _loader())
    assert model.threads == {"train": {1}, "val": {1}}  # every training and validation step on one thread
    assert torch.get_num_threads() == 3  # the caller's count once fit is over
    trainer.test(model, _loader(), verbose=False)
    assert model.threads["test"] == {1} and torch.get_num_threads() == 3


def test_zero_leaves_the_threads_alone(restore_threads):
    torch.set_num_threads(3)
    model = _Probe()
    _trainer([TorchThreads(threads=0)]).fit(model, _loader())
    assert model.threads == {"train": {3}} and torch.get_num_threads() == 3


def test_negative_threads_is_a_config_error():
    with pytest.raises(ConfigError, match="TorchThreads.threads must be >= 0"):
        TorchThreads(threads=-1)
