"""The notebook suite end to end at PRESET=smoke (so a broken notebook cannot land), and its statistics."""
import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import papermill
import pytest
import torch

from mixedae_core.config import PRESETS, make_config
from mixedae_core.lab.campaign import campaign_plan, latest_start, run_campaign
from mixedae_core.lab.claims import (AT_FLOOR, adjusted, against_spread, claim, headline, holm, mean_std, paired_test,
                                     per_seed, verdict)
from mixedae_core.lab.experiments import ABLATIONS, EXPERIMENTS, NOTEBOOKS, equal_compute, k_values
from mixedae_core.lab.notebook import NOTEBOOK_DIR, conclusion
from mixedae_core.lab.reproduce import CampaignIncomplete, _missing_line, execute_notebook, run_notebooks
from mixedae_core.lab.runs import records_control
from mixedae_core.lab.suite import INTERACTIVE, Suite, final_losses
from mixedae_core.lab.timing import bench_key
from mixedae_core.switches import resolve

SEEDS = list(PRESETS["smoke"].seeds)


def planned_runs(preset, seeds):
    return campaign_plan(Suite(preset, seeds, progress=False))


def run_dirs(root):
    return {p.name for p in root.iterdir() if p.is_dir() and p.name not in ("logs", "baselines")} if root.exists() else set()


def test_campaign_then_every_notebook_at_smoke_and_tables_again_from_records_alone(tmp_path):
    runs = tmp_path / "runs-cache"
    timings = run_notebooks("smoke", tmp_path, runs_root=str(runs), progress=False, workers=2)
    assert list(timings) == list(NOTEBOOKS)
    campaign = json.loads((tmp_path / "tables" / "smoke" / "campaign_log.json").read_text())[-1]
    plan = planned_runs("smoke", SEEDS)
    assert campaign["complete"] and len(campaign["trained"]) == len(plan) and not campaign["failed"]
    records = {p.name for p in (tmp_path / "runs" / "smoke").iterdir()}
    assert len(records) == len(plan)
    # the plan is exactly what the notebooks use: they trained no run of their own
    assert run_dirs(runs) == records
    for name in NOTEBOOKS:
        assert (tmp_path / "notebooks" / "smoke" / f"{name}.ipynb").exists()
    tables = tmp_path / "tables" / "smoke"
    for name in NOTEBOOKS[1:]:
        claims = pd.read_csv(tables / f"claims_{name}.csv", comment="#")
        assert len(claims) and set(claims.columns) >= {"claim", "measured", "verdict", "seeds"}
    header = (tables / "01_transfer.csv").read_text().splitlines()[:8]
    assert any(line.startswith("# commit: ") for line in header) and any("# preset: smoke" == l for l in header)
    figures = {p.name for p in (tmp_path / "figures" / "smoke").glob("*.png")}
    assert all(any(f.startswith(name[:3]) for f in figures) for name in NOTEBOOKS)  # each notebook draws
    assert not (tmp_path / "README.md").exists()  # the smoke check's results are not the committed README's
    assert set(json.loads((tables / "reproduce_log.json").read_text())) == set(NOTEBOOKS)
    # every headline run: the random init, the point its probe recorded after epoch 1 of 2, its final evaluation
    curves = pd.read_csv(tables / "01_learning_curves.csv", comment="#")
    assert all(list(e) == [0, 1, 2] for _, e in curves.groupby(["method", "seed"])["epochs"])
    assert len(curves) == 3 * len(SEEDS) * 3 and "01_learning_curves.png" in figures
    midway = curves[curves["epochs"] == 1]
    assert midway["knn_cls"].between(0, 1).all() and (midway["content_ratio"] > 0).all()
    assert midway[midway["method"] == "mixedae"]["topk_acc"].notna().all()

    # committed records alone (kept weights, no checkpoints) regenerate every table without training anything,
    # the measures of 05 that read the drawn models too
    before = {name: pd.read_csv(tables / f"{name}.csv", comment="#")
              for name in ("01_transfer", "02_dose_response", "03_k_transfer", "04_compose_vs_full", "05_grouping",
                           "05_cls_mass_cluttered")}
    fresh = tmp_path / "fresh-cache"
    run_notebooks("smoke", tmp_path, runs_root=str(fresh), progress=False)
    assert run_dirs(fresh) == set()
    for name, table in before.items():
        pd.testing.assert_frame_equal(pd.read_csv(tables / f"{name}.csv", comment="#"), table)
    again = run_campaign("smoke", SEEDS, tmp_path, str(fresh), progress=False)
    assert again["complete"] and again["recorded_before"] == len(plan) and not again["trained"]


def test_campaign_with_no_budget_left_starts_nothing_and_reproduce_stops_before_the_notebooks(tmp_path):
    result = run_campaign("smoke", [0], tmp_path, str(tmp_path / "runs-cache"), budget_s=0, progress=False)
    assert not result["complete"] and len(result["left"]) == len(planned_runs("smoke", [0])) and not result["trained"]
    with pytest.raises(CampaignIncomplete, match="Run the same command again"):
        run_notebooks("smoke", tmp_path, runs_root=str(tmp_path / "runs-cache"), budget_s=0, progress=False)
    assert not (tmp_path / "notebooks" / "smoke" / "00_tour.ipynb").exists()
    waiting = json.loads((tmp_path / "tables" / "smoke" / "missing_runs.json").read_text())
    assert list(waiting) == list(NOTEBOOKS)


def test_a_campaign_in_sittings_renders_the_notebooks_whose_runs_are_recorded_and_lists_what_the_others_wait_for(
        tmp_path):
    runs = str(tmp_path / "runs-cache")
    headline = [{"method": m, "seed": s} for s in SEEDS for m in ("mae", "naive", "mixedae")]
    assert run_campaign("smoke", SEEDS, tmp_path, runs, plan=headline, progress=False, workers=2)["complete"]
    with pytest.raises(CampaignIncomplete, match="rendered 00_tour, 01_naive_mixing_vs_mae, 05_attention_maps"):
        run_notebooks("smoke", tmp_path, runs_root=runs, budget_s=0, progress=False)
    rendered = {p.stem for p in (tmp_path / "notebooks" / "smoke").glob("*.ipynb")}
    assert rendered == {"00_tour", "01_naive_mixing_vs_mae", "05_attention_maps"}
    waiting = json.loads((tmp_path / "tables" / "smoke" / "missing_runs.json").read_text())
    assert list(waiting) == ["02_mutual_information", "03_choice_of_k", "04_compose_vs_full"]
    suite = Suite("smoke", progress=False, out_dir=str(tmp_path), runs_root=runs)
    assert sorted(waiting["02_mutual_information"]) == sorted(
        suite.record_path(method=m, group_by="class", seed=0).name for m in ("naive", "mixedae"))
    assert "Incomplete: " in "".join(_missing_line(tmp_path, "smoke"))


def test_planned_runs_cover_every_method_seed_and_the_ablations():
    plan = planned_runs("smoke", [0, 1, 2])
    assert {(o["method"], o["seed"]) for o in plan if len(o) == 2} == \
        {(m, s) for m in ("mae", "naive", "mixedae") for s in (0, 1, 2)}
    config = make_config("smoke", method="mixedae")
    assert sorted(o["topk"] for o in plan if "topk" in o) == \
        sorted(k for k in k_values(config) if k != resolve(config).K)
    # notebook 03 names every K explicitly; its default-K run is the headline's MixedAE run (one record)
    k_runs = EXPERIMENTS["03_choice_of_k"].runs(config, [0])
    assert [o["topk"] for o in k_runs] == k_values(config) and resolve(config).K in k_values(config)
    suite = Suite("smoke", [0], progress=False)
    assert suite.record_path(method="mixedae", seed=0, topk=resolve(config).K) == \
        suite.record_path(method="mixedae", seed=0)
    for ablation in ABLATIONS.values():  # the paper's remaining ablations, first seed only
        assert [o["seed"] for o in plan if o == {"method": "mixedae", **ablation, "seed": o["seed"]}] == [0]
    full = [o for o in plan if o.get("mix_mode") == "full"]
    # smoke: 128 images / batch 16 = 8 steps per epoch, 2 epochs; equal compute = 16 / G steps
    assert [o.get("max_steps") for o in full] == [None, 16 // 4]
    assert len(plan) == len({tuple(sorted(o.items())) for o in plan})


def test_equal_compute_divides_by_the_newest_bench_ratio_of_the_same_model(tmp_path):
    config = make_config("smoke", method="mixedae")  # 16 planned steps
    other = make_config("smoke", method="mixedae", embed_dim=64)
    csv = tmp_path / "bench.csv"

    def rows(model, date, compose_ms, full_ms):
        return [{"model_key": bench_key(model), "variant": v, "step_ms": ms, "date": date, "device": "CPU x",
                 "commit": "abc"} for v, ms in (("mae", 1.0), ("mixedae", compose_ms), ("mixedae_full", full_ms))]

    assert equal_compute(config, csv)[0] == 16 // 4  # no bench file: 1/G
    pd.DataFrame(rows(other, "2026-02-01", 10.0, 20.0)).to_csv(csv, index=False)
    steps, basis = equal_compute(config, csv)
    assert steps == 16 // 4 and "no `make bench` row" in basis  # another model's ratio is not used
    pd.DataFrame(rows(other, "2026-02-01", 10.0, 20.0) + rows(config, "2026-01-01", 10.0, 80.0)
                 + rows(config, "2026-03-01", 10.0, 32.0)).to_csv(csv, index=False)
    steps, basis = equal_compute(config, csv)
    assert steps == 5 and "3.20x" in basis and "2026-03-01" in basis  # 16 / 3.2, the newest rows


def test_unknown_notebook_parameter_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="has no parameter"):
        run_notebooks("smoke", tmp_path, only=["00"], extra={"sedes": [0]}, progress=False)
    with pytest.raises(ValueError, match="no notebook starts with 99"):
        run_notebooks("smoke", tmp_path, only=["99"], progress=False)


@pytest.mark.parametrize("notebook, params, needle", [
    ("04_compose_vs_full", {"bogus": 1}, "has no parameter(s) bogus"),
    ("04_compose_vs_full", {"seeds": "notalist"}, "seeds takes a list of integers such as [0, 1, 2], or None"),
    ("00_tour", {"seeds": 0}, "seeds takes a list of integers such as [0, 1, 2], or None"),
    ("00_tour", {"n_images": 0}, "n_images counts something: it takes an integer >= 1, got 0"),
    ("04_compose_vs_full", {"timing_steps": -2}, "timing_steps counts something")])
def test_papermill_run_directly_refuses_undeclared_or_mistyped_parameters(notebook, params, needle, tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match=re.escape(needle)):
        papermill.execute_notebook(str(NOTEBOOK_DIR / f"{notebook}.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"preset": "smoke", "out_dir": str(tmp_path), **params},
                                   kernel_name="python3", progress_bar=False)


def test_suite_refuses_seeds_that_are_not_a_list_of_integers():
    for seeds in ("012", [0, "1"], [], [True]):
        with pytest.raises(ValueError, match="seeds must be None"):
            Suite("smoke", seeds, progress=False)


def test_reproduce_refuses_an_unknown_prefix_beside_a_known_one(tmp_path, capsys):
    from mixedae_core.lab.cli import main
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "--preset", "smoke", "--out", str(tmp_path / "results"), "--only", "01,99"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "no notebook starts with 99;" in err and "01_naive_mixing_vs_mae" in err
    assert not (tmp_path / "results").exists()


def test_paired_test_matches_the_t_formula():
    a, b = [0.80, 0.82, 0.79, 0.85], [0.78, 0.80, 0.80, 0.81]
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    t = mean / (sd / 2)
    from scipy.stats import t as student
    assert paired_test(a, b) == pytest.approx(2 * student.sf(abs(t), 3))
    assert math.isnan(paired_test([0.5], [0.4]))
    # the same difference in every seed has no t statistic: decided explicitly, not left as "not significant"
    assert paired_test([0.5, 0.6, 0.7], [0.4, 0.5, 0.6]) == 0.0
    assert paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]) == 1.0


def test_holm_adjusts_by_rank_and_keeps_the_order():
    # sorted 0.01, 0.03, 0.04 of m = 3 tests: 3 x 0.01, then max(0.03, 2 x 0.03), then max(0.06, 1 x 0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted_p = holm([0.5, float("nan"), 0.2])  # nan is no test: m = 2
    assert adjusted_p[0] == pytest.approx(0.5) and math.isnan(adjusted_p[1]) and adjusted_p[2] == pytest.approx(0.4)
    assert holm([0.9, 0.3]) == pytest.approx([0.9, 0.6])  # monotone: 2 x 0.3, then max(0.6, 0.9)
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_adjusted_verdicts_floor_and_headline_on_hand_made_claims():
    seeds_a, seeds_b = [0.90, 0.80, 0.85], [0.70, 0.62, 0.64]
    one = claim("x", seeds_a, seeds_b, +1, "A", "B")
    assert one["verdict"].startswith("reproduces") and one["p_value"] < 0.05
    # p = 0.02 alone reproduces; the smallest of three claims, Holm multiplies it by 3: 0.06, not significant
    first = {**one, "p_value": 0.02, "verdict": verdict(one["difference"], 0.02, +1)}
    rows = adjusted([first, {**one, "p_value": 0.2}, {**one, "p_value": 0.5}])
    assert first["verdict"].startswith("reproduces")
    assert rows[0]["p_adjusted"] == pytest.approx(0.06) and rows[0]["verdict"] == "paper's direction, not significant"
    # a pretext difference of 0.02 with models only 0.001 below their floor is unreadable
    assert claim("y", [0.50, 0.51, 0.52], [0.52, 0.53, 0.54], -1, "A", "B", scale=1, floor_gap=0.001)["verdict"] == AT_FLOOR
    assert verdict(-0.02, 0.01, -1, floor_gap=0.05).startswith("reproduces")
    cost = {"claim": "cost", "measured": "+8 %", "difference": 8.0, "p_value": float("nan"), "seeds": 1,
            "verdict": "not comparable: another setting"}
    assert adjusted([cost])[0]["verdict"] == "not comparable: another setting"  # no paper_sign: kept
    assert headline(["paper's direction, not significant", AT_FLOOR, cost["verdict"].replace("not comparable", "reported")]
                    ).startswith("**None of 2 claims is significant**")
    text = headline(["reproduces (paper's direction, p < 0.05)", "contradicts (opposite direction, p < 0.05)",
                     "opposite direction, not significant"])
    assert text.startswith("**2 of 3 claims are significant**") and "1 in the paper's direction, 1 against" in text


def test_verdicts_follow_sign_and_significance():
    assert verdict(+1.0, 0.01, +1).startswith("reproduces")
    assert verdict(+1.0, 0.30, +1) == "paper's direction, not significant"
    assert verdict(-1.0, 0.01, +1).startswith("contradicts")
    assert verdict(-1.0, float("nan"), +1) == "opposite direction, not significant"
    row = claim("x", [0.9, 0.8, 0.85], [0.7, 0.6, 0.65], +1, "A", "B")
    assert row["difference"] == pytest.approx(20.0) and "A 85.0 ± 5.0 vs B 65.0 ± 5.0" in row["measured"]
    assert mean_std([0.5]) == "50.0"
    # seeds that agree up to float rounding have no spread, not a spread of 1e-17
    assert mean_std([0.1 + 0.2, 0.3, 0.3], scale=1, digits=None) == "0.3 ± 0"
    assert mean_std([0.3, 0.31], scale=1, digits=None) == "0.305 ± 0.00707"


def test_each_effect_is_set_against_a_seed_spread():
    knn = claim("kNN", [0.80, 0.82, 0.84], [0.70, 0.72, 0.74], +1, "A", "B")  # +10 points, own std 2
    small = claim("kNN", [0.80, 0.82, 0.84], [0.79, 0.81, 0.83], +1, "A", "B")  # +1 point
    loss = claim("loss", [0.50, 0.52, 0.54], [0.51, 0.53, 0.55], -1, "A", "B", scale=1, unit="loss")
    single = claim("loss", [0.5], [0.6], -1, "A", "B", scale=1, unit="loss")
    assert "is larger than the headline kNN's seed spread (3)" in against_spread(knn, 3.0)
    assert "is not larger than the headline kNN's seed spread (3)" in against_spread(small, 3.0)
    # no headline spread: a points claim falls back on its own seeds; other units always use their own
    assert "is larger than its seed spread (2)" in against_spread(knn, None)
    assert "is not larger than its seed spread (0.02)" in against_spread(loss, 3.0)
    assert "one seed" in against_spread(single, 3.0)
    assert against_spread({"claim": "cost", "difference": 5.0}, 3.0) == ""  # reported numbers have no unit
    text = conclusion([knn], knn_spread=3.0).data
    assert "**3.00 points**" in text and "larger than the headline kNN's seed spread" in text


def test_record_cli_trains_evaluates_and_records_one_run(tmp_path, monkeypatch, capsys):
    from mixedae_core.lab.cli import main
    monkeypatch.setenv("MIXEDAE_RUNS", str(tmp_path / "runs-cache"))
    main(["record", "--preset", "smoke", "--out", str(tmp_path), "--method", "naive", "--seed", "3",
          "--no-progress"])
    record = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert record.parent == tmp_path / "runs" / "smoke" and record.name.startswith("naive-")
    evaluation = json.loads((record / "eval.json").read_text())
    assert evaluation["config"]["seed"] == 3 and not (record / "checkpoint.pt").exists()
    with pytest.raises(SystemExit) as info:
        main(["record", "--preset", "smoke", "--out", str(tmp_path), "--epochs", "0"])
    assert info.value.code == 2 and "epochs must be >= 1" in capsys.readouterr().err


def test_campaign_stops_runs_at_its_budget_and_the_next_campaign_resumes_them(tmp_path):
    import torch
    from mixedae_core.lab.runs import run_dir_for
    runs = tmp_path / "runs-cache"
    long_run = dict(method="mae", seed=0, epochs=3000)  # minutes of training: certain to be cut
    run_dir = run_dir_for(make_config("smoke", **long_run), runs)

    def campaign():
        return run_campaign("smoke", [0], tmp_path, str(runs), budget_s=25, min_start_s=0, plan=[long_run],
                            progress=False, grace_s=60)

    first = campaign()
    assert [e["run"] for e in first["stopped"]] == [run_dir.name] and not first["complete"]
    assert not (run_dir / "summary.json").exists()
    stopped_at = torch.load(run_dir / "checkpoint.pt", weights_only=False)["state"]["step"]
    assert stopped_at > 0
    second = campaign()
    assert second["stopped"] and f"resuming run {run_dir} at step {stopped_at} of " in (runs / "logs" / f"{run_dir.name}.log").read_text()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["state"]["step"] > stopped_at


def test_final_losses_come_from_the_last_logged_window_not_the_epoch_mean():
    metrics = [{"kind": "step", "step": s, "loss_rec": float(s), "loss_hc": 0.0} for s in range(0, 101, 10)]
    metrics.append({"kind": "epoch", "step": 100, "loss_rec": 50.0, "loss_hc": 0.0})  # the epoch mean: not it
    assert final_losses(metrics) == {"loss_rec": 95.0, "loss_hc": 0.0}  # steps 90 and 100
    assert final_losses(metrics[-2:-1]) == {"loss_rec": 100.0, "loss_hc": 0.0}
    assert final_losses([]) == {}


def test_notebooks_are_thin_their_analysis_lives_in_the_lab():
    import ast

    import nbformat
    longest = 15
    for name in NOTEBOOKS:
        cells = [c for c in nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4).cells if c.cell_type == "code"]
        assert "parameters" in cells[0].metadata.get("tags", []), name
        for i, cell in enumerate(cells):
            assert len(cell.source.splitlines()) <= longest, f"{name}, code cell {i}: more than {longest} lines"
            defined = [node.name for node in ast.walk(ast.parse(cell.source))
                       if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
            assert not defined, f"{name}, code cell {i} defines {defined}: a notebook's helpers belong in the lab"


def test_per_seed_pairs_values_by_seed():
    table = pd.DataFrame({"method": ["a", "b", "a", "b", "a"], "layout": ["x", "x", "x", "x", "y"],
                          "seed": [2, 0, 0, 2, 1], "score": [0.2, 1.0, 0.0, 1.2, 9.0]})
    assert per_seed(table, "score", method="a", layout="x").tolist() == [0.0, 0.2]
    assert per_seed(table, "score", method="b").tolist() == [1.0, 1.2]
    assert per_seed(table, "seed").tolist() == [0, 0, 1, 2, 2]


def test_a_budgeted_campaign_judges_what_can_still_start_by_its_typical_runs_not_the_one_that_trained_the_control():
    suite = Suite("long", progress=False)
    one_off = lambda e: records_control(suite.config(method=e["method"], seed=e["seed"]), suite.eval_config)  # noqa
    finished = [{"method": "mae", "seed": 0, "seconds": 4000}, {"method": "mae", "seed": 1, "seconds": 1100},
                {"method": "naive", "seed": 0, "seconds": 1200}]
    assert one_off(finished[0]) and not one_off(finished[2])
    assert latest_start(7000, finished, one_off) == 7000 - 1200
    assert latest_start(7000, finished[:1], one_off) is None and latest_start(None, finished, one_off) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_errors_inside_a_notebook_give_advice_in_the_notebooks_own_terms(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(NOTEBOOK_DIR / "00_tour.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"preset": "smoke", "out_dir": str(tmp_path), "device": "cuda",
                                               "runs_root": str(tmp_path / "runs")},
                                   kernel_name="python3", progress_bar=False)
    assert "device = 'cpu' in the parameters cell (papermill: -p device cpu)" in info.value.evalue
    assert "--device" not in info.value.evalue


def tree(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_notebook_run_by_hand_writes_apart_and_leaves_the_results_folder_as_it_was(tmp_path, monkeypatch):
    """As "Run All" in Jupyter: no MIXEDAE_WRITE_RESULTS."""
    monkeypatch.delenv("MIXEDAE_WRITE_RESULTS", raising=False)
    out, runs = tmp_path / "results", str(tmp_path / "runs")
    execute_notebook(NOTEBOOK_DIR / "00_tour.ipynb", tmp_path / "00.ipynb",  # as make reproduce does
                     {"preset": "smoke", "out_dir": str(out), "runs_root": runs}, progress=False)
    before = tree(out)
    assert list((out / "figures" / "smoke").glob("00_*.png"))
    papermill.execute_notebook(str(NOTEBOOK_DIR / "00_tour.ipynb"), str(tmp_path / "by-hand.ipynb"),
                               parameters={"preset": "smoke", "out_dir": str(out), "runs_root": runs},
                               kernel_name="python3", progress_bar=False)
    after = tree(out)
    assert {p: b for p, b in after.items() if p.parts[0] != INTERACTIVE} == before
    assert list((out / INTERACTIVE / "figures" / "smoke").glob("00_*.png"))


def test_an_outdated_committed_record_read_by_hand_is_evaluated_again_in_a_copy(tmp_path):
    out, runs = tmp_path / "results", str(tmp_path / "runs")
    record = Suite("smoke", [0], out_dir=str(out), runs_root=runs, progress=False).record(method="mae", seed=0)
    outdated = json.loads((record / "eval.json").read_text())
    outdated["eval"]["recipe_of_the_past"] = True
    (record / "eval.json").write_text(json.dumps(outdated))
    before = tree(out)
    shutil.rmtree(runs)  # the kept weights alone: the record is evaluated again, not retrained
    by_hand = Suite("smoke", [0], out_dir=str(out), runs_root=runs, progress=False, by_hand=True)
    fresh = by_hand.record(method="mae", seed=0)
    assert tree(out) == {**before, **{p: b for p, b in tree(out).items() if p.parts[0] == INTERACTIVE}}
    assert fresh == out / INTERACTIVE / "runs" / "smoke" / record.name
    assert "recipe_of_the_past" not in (fresh / "eval.json").read_text()
    assert by_hand.record_path(method="mae", seed=0) == fresh  # read from there on


def test_a_notebook_that_fails_is_kept_apart_for_reading_and_its_target_is_not_written(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="n_images counts something"):
        execute_notebook(NOTEBOOK_DIR / "00_tour.ipynb", tmp_path / "00_tour.ipynb",
                         {"preset": "smoke", "out_dir": str(tmp_path), "n_images": 0}, progress=False)
    assert [p.name for p in tmp_path.glob("*.ipynb")] == ["00_tour.failed.ipynb"]
    assert "n_images counts something" in (tmp_path / "00_tour.failed.ipynb").read_text()
