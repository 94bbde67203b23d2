"""Learning curves recorded while a run trains: the probe measures, and changes nothing the run computes."""
import pytest
import torch

from mixedae_core.config import PRESETS, make_config
from mixedae_core.evaluate import LearningCurveProbe, content_ratio, evaluate_model
from mixedae_core.lab.suite import Suite
from mixedae_core.model import build_model
from mixedae_core.runfiles import load_model, read_metrics
from mixedae_core.train import probe_model, train


def test_a_probed_run_trains_the_weights_of_the_unprobed_run_and_logs_one_point_per_asked_epoch(tmp_path):
    config = make_config("smoke", method="mixedae", epochs=3)
    ec = PRESETS["smoke"].eval
    train(config, tmp_path / "plain", progress=False)
    train(config, tmp_path / "probed", progress=False, probe=LearningCurveProbe(config, ec, (1, 2)))
    plain, probed = (load_model(tmp_path / name)[0].state_dict() for name in ("plain", "probed"))
    assert all(torch.equal(plain[k], probed[k]) for k in plain)
    points = [m for m in read_metrics(tmp_path / "probed") if m["kind"] == "curve"]
    assert [p["epoch"] for p in points] == [0, 1]  # after epochs 1 and 2 of 3; the end is the final evaluation's
    assert not [m for m in read_metrics(tmp_path / "plain") if m["kind"] == "curve"]
    for p in points:
        assert 0 <= p["knn_cls"] <= 1 and 0 <= p["probe_mean"] <= 1 and 0 < content_ratio(p) < 2
    assert points[0]["knn_cls"] != points[1]["knn_cls"] or points[0]["shared_loss_random"] != points[1]["shared_loss_random"]


def test_the_probe_at_the_end_measures_what_the_final_evaluation_measures(tmp_path):
    config = make_config("smoke", method="mae", epochs=1)
    ec = PRESETS["smoke"].eval
    train(config, tmp_path / "run", progress=False, probe=LearningCurveProbe(config, ec, (1,)))
    point = next(m for m in read_metrics(tmp_path / "run") if m["kind"] == "curve")
    final = evaluate_model(load_model(tmp_path / "run")[0], config, ec)
    shared = ("knn_cls", "knn_mean", "probe_cls", "probe_mean", "shared_loss_random", "floor_random")
    assert {k: point[k] for k in shared} == {k: final[k] for k in shared}


def test_only_the_headline_runs_of_a_preset_with_curve_epochs_get_a_probe():
    smoke, cpu = Suite("smoke", progress=False), Suite("cpu", progress=False)
    assert isinstance(smoke.curve_probe(smoke.config(method="naive", seed=1)), LearningCurveProbe)
    assert smoke.curve_probe(smoke.config(method="mixedae", seed=0, group_by="class")) is None
    assert smoke.curve_probe(smoke.config(method="mixedae", seed=7)) is None  # not one of the suite's seeds
    assert cpu.curve_probe(cpu.config(method="mae", seed=0)) is None  # the cpu preset records no curves


def test_the_probe_runs_in_eval_mode_outside_the_training_random_stream():
    model = build_model(make_config("smoke", method="mae")).train()
    seen = {}

    def probe(m, epochs_done):
        seen["training"] = m.training
        torch.rand(5)  # a probe may draw: the training's stream must not see it
        return {"x": 1.0}

    before = torch.get_rng_state()
    point = probe_model(probe, model, 1)
    assert seen["training"] is False and model.training and torch.equal(before, torch.get_rng_state())
    assert point["x"] == 1.0 and point["probe_seconds"] >= 0
    assert probe_model(lambda m, e: None, model, 1) is None


def test_a_run_that_dies_while_probing_resumes_and_records_each_point_once(tmp_path):
    config, ec = make_config("smoke", method="mixedae", epochs=3), PRESETS["smoke"].eval
    good = LearningCurveProbe(config, ec, (1, 2))

    def dies_at_two(model, epochs_done):
        if epochs_done == 2:
            raise RuntimeError("killed while probing")
        return good(model, epochs_done)

    with pytest.raises(RuntimeError, match="killed while probing"):
        train(config, tmp_path / "run", progress=False, probe=dies_at_two)
    train(config, tmp_path / "run", progress=False, probe=good)
    assert [m["epoch"] for m in read_metrics(tmp_path / "run") if m["kind"] == "curve"] == [0, 1]
    train(config, tmp_path / "plain", progress=False)
    plain, resumed = (load_model(tmp_path / name)[0].state_dict() for name in ("plain", "run"))
    assert all(torch.equal(plain[k], resumed[k]) for k in plain)
