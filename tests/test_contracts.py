"""The declared contracts: a DataModule or task model missing a member fails when it is instantiated, naming the
member and the class; a task's evaluation asks for its protocol once, with one clear error; ClimateTask's hooks
see the subclass's attributes and its arguments are the hyperparameters."""

from __future__ import annotations

import pytest
import torch

from climateml.contracts import FieldData, NowcastData, TabularData, require
from climateml.data.base import ClimateDataModule, DataSpec
from climateml.errors import ConfigError
from climateml.models.base import ClimateTask


class Complete(ClimateDataModule):
    def build(self):
        pass

    @property
    def spec(self):
        return DataSpec(["a"], ["b"], (1,), (1,))

    @property
    def layout(self):
        return None

    def to_xarray(self, values, split):
        return {}

    def truth(self, split):
        return {}

    def inputs_xarray(self, split):
        return None


def test_a_datamodule_missing_a_member_fails_at_instantiation_naming_it():
    class NoLayout(ClimateDataModule):
        build, to_xarray, truth, inputs_xarray = Complete.build, Complete.to_xarray, Complete.truth, Complete.inputs_xarray
        spec = Complete.spec

    with pytest.raises(TypeError, match=r"NoLayout.*layout"):
        NoLayout()
    Complete(batch_size=2)  # every member there: fine


def test_layout_and_spec_must_be_properties():
    class LayoutMethod(Complete):
        def layout(self):
            return None

    with pytest.raises(TypeError, match=r"LayoutMethod defines layout as a method.*properties"):
        LayoutMethod()


def test_a_task_missing_a_hook_fails_at_instantiation_naming_it():
    class NoStep(ClimateTask):
        def configure_models(self):
            self.net = torch.nn.Linear(1, 1)

    with pytest.raises(TypeError, match=r"NoStep.*shared_step"):
        NoStep(DataSpec(["a"], ["b"], (1,), (1,)))


class Tiny(ClimateTask):
    """Sets its attributes after super().__init__; its hooks read them."""

    def __init__(self, spec=None, width: int = 3, **task_options):
        super().__init__(spec, **task_options)
        self.width = width

    def configure_models(self):
        self.net = torch.nn.Sequential(torch.nn.Linear(1, self.width), torch.nn.Linear(self.width, 1))

    def shared_step(self, batch, stage):
        return self(batch["x"]).mean()

    def forward(self, x):
        return self.net(x)


def test_task_hooks_run_after_the_subclass_init_and_its_arguments_are_hyperparameters():
    spec = DataSpec(["a"], ["b"], (1,), (1,), {"x_mean": torch.tensor([2.0]), "x_std": torch.tensor([4.0])})
    model = Tiny(spec, width=5, lr=0.5)
    assert model.net[0].out_features == 5
    assert model.hparams["width"] == 5 and model.hparams["lr"] == 0.5 and model.hparams["optimizer"] == "adam"
    assert model.hparams["spec"]["inputs"] == ["a"]
    again = Tiny(**model.hparams)  # what load_from_checkpoint does
    assert again.net[0].out_features == 5 and again.hparams["lr"] == 0.5
    # the one standardisation of inputs, with the spec's statistics
    assert model.standardize(torch.tensor([[6.0]])).item() == pytest.approx(1.0)


def test_an_evaluation_asks_for_its_protocol_once_with_one_clear_error():
    dm = Complete()
    for protocol, member in ((NowcastData, "past_frames"), (FieldData, "fields"), (TabularData, "tensors")):
        with pytest.raises(ConfigError, match=rf"evaluation X needs a DataModule with .*{protocol.__name__}.*"
                                              rf"Complete has no .*{member}"):
            require(dm, protocol, "evaluation X")
