"""The declared contracts: a DataModule or task model missing a member fails when it is instantiated, naming the
member and the class; a task's evaluation asks for its protocol once, with one clear error; ClimateTask's hooks
see the subclass's attributes and its arguments are the hyperparameters."""

from __future__ import annotations

import pytest
import torch

from climateml.contracts import (BatchData, FieldData, NowcastBatchData, NowcastData, SegmentationBatchData, TabularData,
                                 members, require)
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

    def batch_to_xarray(self, values, split, indices, batch=None):
        return {}

    def batch_truth(self, batch, split, indices):
        return {}


def test_a_datamodule_missing_a_member_fails_at_instantiation_naming_it():
    class NoLayout(ClimateDataModule):
        build, to_xarray, truth, inputs_xarray = Complete.build, Complete.to_xarray, Complete.truth, Complete.inputs_xarray
        batch_to_xarray, batch_truth = Complete.batch_to_xarray, Complete.batch_truth
        spec = Complete.spec

    with pytest.raises(TypeError, match=r"NoLayout.*layout"):
        NoLayout()
    Complete(batch_size=2)  # every member there: fine


def test_a_datamodule_missing_a_member_of_a_protocol_it_provides_fails_at_instantiation_naming_it():
    """The members set in the subclass's __init__ count (checked once it has returned); a method or property of the
    class is not run by the check (Complete.spec would build the data)."""
    class Nowcasts(Complete):
        PROTOCOLS = (NowcastData,)

        def __init__(self, n_out: int = 2, **kwargs):
            super().__init__(**kwargs)
            self.n_out = n_out

    with pytest.raises(TypeError, match=r"Nowcasts provides NowcastData \(its PROTOCOLS\) but has no past_frames$"):
        Nowcasts(n_out=3)

    class Complete_(Nowcasts):
        def past_frames(self, split):
            return None

    assert Complete_(n_out=3).n_out == 3

    class Fields(Complete):  # no __init__ of its own: checked too
        PROTOCOLS = (FieldData,)

    with pytest.raises(TypeError, match=r"Fields provides FieldData .* has no fields$"):
        Fields()


def test_each_task_datamodule_provides_what_its_evaluation_requires(monkeypatch):
    """Constructed (no data read), each task's DataModule passes the check of the protocols its evaluation requires
    (the streaming ones include the members of those they extend); without one of its members, construction fails
    naming it."""
    from climateml.data import ClimateBenchDataModule, NowcastingDataModule, SegmentationDataModule

    assert members(SegmentationBatchData) == ["dataloader", "batch_to_xarray", "batch_truth", "fields"]

    periods = {f"{split}_period": [f"2024-06-0{day}T00:00", f"2024-06-0{day}T12:00"]
               for day, split in enumerate(("train", "val", "test"), start=1)}
    made = {ClimateBenchDataModule: lambda: ClimateBenchDataModule("/nowhere", synthesize_if_missing=False),
            SegmentationDataModule: lambda: SegmentationDataModule("/nowhere", synthesize_if_missing=False),
            NowcastingDataModule: lambda: NowcastingDataModule("/nowhere/*.nc", synthesize_if_missing=False, **periods)}
    for cls, protocol, member in ((ClimateBenchDataModule, TabularData, "tensors"),
                                  (SegmentationDataModule, FieldData, "fields"),
                                  (NowcastingDataModule, NowcastData, "past_frames"),
                                  (NowcastingDataModule, NowcastBatchData, "batch_past_frames")):
        assert protocol in cls.PROTOCOLS and not made[cls]().is_built
        # the batch members (batch_to_xarray, batch_truth) are declared by ClimateDataModule itself
        assert isinstance(made[cls](), BatchData) and (cls is not SegmentationDataModule
                                                      or isinstance(made[cls](), SegmentationBatchData))
        with monkeypatch.context() as patch:
            patch.delattr(cls, member)
            with pytest.raises(TypeError, match=rf"{cls.__name__} provides {protocol.__name__} .* has no {member}$"):
                made[cls]()


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
