"""Experiment trackers through Accelerate (output.log_with): TensorBoard event files, a
Weights & Biases offline run and an MLflow file store each get the metrics, the recipe and the
reconstruction grids of a tiny run."""


import pytest

from rvq_cli.config import load_recipe
from rvq_cli.training import TrainingError, train
from rvq_cli.training import trackers as trk
from tiny import recipe_file

STEPS = ["train.steps=2", "train.sample_every=2", "train.log_every=1"]


def _train(tmp_path, shards, *extra):
    return train(load_recipe(recipe_file(tmp_path, shards), STEPS + list(extra)), quiet=True).run_dir


def test_tensorboard_gets_scalars_and_the_grid(tmp_path, shards):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _train(tmp_path, shards, "output.log_with=[tensorboard]")
    acc = EventAccumulator(str(run / "rvq"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("rec_loss")] == [1, 2]
    images = acc.Images("reconstructions")
    assert [e.step for e in images] == [2] and images[0].width > 16 and images[0].height > 16


def test_wandb_offline_keeps_the_run_in_the_run_folder(tmp_path, shards, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = _train(tmp_path, shards, "output.log_with=[wandb]", "output.project=rvq-tests")
    found = list((run / "wandb").glob("offline-run-*"))
    assert len(found) == 1
    assert list(found[0].glob("run-*.wandb")), "no wandb log file"
    grids = list((found[0] / "files" / "media" / "images").glob("reconstructions_*.png"))
    assert len(grids) == 1 and grids[0].stat().st_size > 100


def test_mlflow_file_store_gets_metrics_params_and_images(tmp_path, shards, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = _train(tmp_path, shards, "output.log_with=[mlflow]", "output.project=rvq-tests")
    client = mlflow.tracking.MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("rvq-tests")
    (found,) = client.search_runs([exp.experiment_id])
    assert [m.step for m in client.get_metric_history(found.info.run_id, "rec_loss")] == [1, 2]
    assert found.data.params["model.quantizer.estimator"] == "rotation"
    assert found.info.run_name == run.name
    artifacts = [a.path for a in client.list_artifacts(found.info.run_id, "images")]
    assert any("reconstructions+step+2+" in a and a.endswith(".png") for a in artifacts), artifacts


def test_several_trackers_at_once_and_the_tensorboard_flag(tmp_path, shards, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = _train(tmp_path, shards, "output.tensorboard=true", "output.log_with=[mlflow]")
    assert list((run / "rvq").glob("events.out.tfevents.*")) and (run / "mlruns").is_dir()
    recipe = load_recipe(recipe_file(tmp_path, shards), ["output.tensorboard=true", "output.log_with=[tensorboard]"])
    assert trk.trackers_of(recipe.output) == ["tensorboard"]


def test_a_tracker_without_its_package_is_refused_before_training(tmp_path, shards, monkeypatch):
    monkeypatch.setitem(trk.PACKAGES, "wandb", "wandb_is_not_installed_here")
    with pytest.raises(TrainingError, match="pip install wandb_is_not_installed_here"):
        _train(tmp_path, shards, "output.log_with=[wandb]", f"output.dir={tmp_path / 'none'}")
    assert not (tmp_path / "none").exists()


def test_an_unknown_tracker_is_a_recipe_problem(tmp_path, shards):
    from rvq_cli.config import RecipeError

    with pytest.raises(RecipeError, match="output.log_with.0"):
        load_recipe(recipe_file(tmp_path, shards), ["output.log_with=[comet]"])
