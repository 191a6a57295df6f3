"""TorchThreads lives in climateml.callbacks with the other callbacks; configs that name its old place,
climateml.models.nowcasting.TorchThreads, keep working."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from climateml.callbacks import TorchThreads
from climateml.cli import main
from climateml.config import instantiate, load_config
from climateml.errors import ConfigError

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "nowcasting.yaml"


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_old_import_path_is_the_same_class():
    from climateml.models.nowcasting import TorchThreads as OldPlace

    assert OldPlace is TorchThreads


def test_nowcasting_config_names_the_callbacks_module():
    callbacks = load_config(CONFIG)["trainer"]["callbacks"]
    paths = [cb["class_path"] for cb in callbacks if cb["class_path"].endswith(".TorchThreads")]
    assert paths == ["climateml.callbacks.TorchThreads"]
    built = [cb for cb in instantiate(callbacks) if isinstance(cb, TorchThreads)]
    assert len(built) == 1 and built[0].threads == 1


@pytest.mark.parametrize("class_path", ["climateml.callbacks.TorchThreads", "climateml.models.nowcasting.TorchThreads"])
def test_both_class_paths_build_it_and_it_sets_the_threads(class_path, restore_threads):
    cb = instantiate({"class_path": class_path, "init_args": {"threads": 1}})
    assert isinstance(cb, TorchThreads)
    torch.set_num_threads(2)
    cb.setup(None, None, "fit")
    assert torch.get_num_threads() == 1
    TorchThreads(threads=0).setup(None, None, "fit")  # 0: torch's setting is left alone
    assert torch.get_num_threads() == 1


def test_negative_threads_is_a_config_error():
    with pytest.raises(ConfigError, match="TorchThreads.threads must be >= 0"):
        TorchThreads(threads=-1)


def test_cli_reads_a_user_config_with_the_old_class_path(tmp_path, capsys):
    config = load_config(CONFIG)
    for cb in config["trainer"]["callbacks"]:
        if cb["class_path"].endswith(".TorchThreads"):
            cb["class_path"] = "climateml.models.nowcasting.TorchThreads"
            cb["init_args"] = {"threads": 2}
    old = tmp_path / "old_nowcasting.yaml"
    old.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as stop:  # --print_config: parse, print the full config, exit 0
        main(["fit", "--config", str(old), "--print_config"])
    assert stop.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    threads = [cb for cb in printed["trainer"]["callbacks"] if cb["class_path"].endswith(".TorchThreads")]
    assert threads == [{"class_path": "climateml.models.nowcasting.TorchThreads", "init_args": {"threads": 2}}]
