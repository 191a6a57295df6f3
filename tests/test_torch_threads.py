"""TorchThreads lives in climateml.callbacks with the other callbacks, and the nowcasting config names it there."""

from __future__ import annotations

from pathlib import Path

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


def test_nowcasting_config_names_the_callbacks_module():
    callbacks = load_config(CONFIG)["trainer"]["callbacks"]
    paths = [cb["class_path"] for cb in callbacks if cb["class_path"].endswith(".TorchThreads")]
    assert paths == ["climateml.callbacks.TorchThreads"]
    built = [cb for cb in instantiate(callbacks) if isinstance(cb, TorchThreads)]
    assert len(built) == 1 and built[0].threads == 1


def test_the_class_path_builds_it_and_it_sets_the_threads(restore_threads):
    cb = instantiate({"class_path": "climateml.callbacks.TorchThreads", "init_args": {"threads": 1}})
    assert isinstance(cb, TorchThreads)
    torch.set_num_threads(2)
    cb.setup(None, None, "fit")
    assert torch.get_num_threads() == 1
    TorchThreads(threads=0).setup(None, None, "fit")  # 0: torch's setting is left alone
    assert torch.get_num_threads() == 1


def test_negative_threads_is_a_config_error():
    with pytest.raises(ConfigError, match="TorchThreads.threads must be >= 0"):
        TorchThreads(threads=-1)
