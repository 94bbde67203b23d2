"""The notebook suite end to end at PRESET=smoke (so a broken notebook cannot land), and its statistics."""
import json
import math

import pandas as pd
import pytest

from mixedae_core.reproduce import NOTEBOOKS, run_notebooks
from mixedae_core.suite import claim, mean_std, paired_test, verdict


def test_every_notebook_runs_at_smoke_and_writes_results(tmp_path):
    timings = run_notebooks("smoke", tmp_path, runs_root=str(tmp_path / "runs"), progress=False)
    assert list(timings) == list(NOTEBOOKS)
    for name in NOTEBOOKS:
        assert (tmp_path / "notebooks" / "smoke" / f"{name}.ipynb").exists()
    tables = tmp_path / "tables" / "smoke"
    for name in NOTEBOOKS[1:]:
        claims = pd.read_csv(tables / f"claims_{name}.csv", comment="#")
        assert len(claims) and set(claims.columns) >= {"claim", "measured", "verdict", "seeds"}
    header = (tables / "01_transfer.csv").read_text().splitlines()[:8]
    assert any(line.startswith("# commit: ") for line in header) and any("# preset: smoke" == l for l in header)
    assert len(list((tmp_path / "figures" / "smoke").glob("*.png"))) >= 15
    readme = (tmp_path / "README.md").read_text()
    assert "| notebook | claim |" in readme and "figures/smoke/01_transfer.png" in readme
    assert set(json.loads((tables / "reproduce_log.json").read_text())) == set(NOTEBOOKS)


def test_unknown_notebook_parameter_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="has no parameter"):
        run_notebooks("smoke", tmp_path, only=["00"], extra={"sedes": [0]}, progress=False)
    with pytest.raises(ValueError, match="matches no notebook"):
        run_notebooks("smoke", tmp_path, only=["99"], progress=False)


def test_paired_test_matches_the_t_formula():
    a, b = [0.80, 0.82, 0.79, 0.85], [0.78, 0.80, 0.80, 0.81]
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    t = mean / (sd / 2)
    from scipy.stats import t as student
    assert paired_test(a, b) == pytest.approx(2 * student.sf(abs(t), 3))
    assert math.isnan(paired_test([0.5], [0.4]))


def test_verdicts_follow_sign_and_significance():
    assert verdict(+1.0, 0.01, +1).startswith("reproduces")
    assert verdict(+1.0, 0.30, +1) == "paper's direction, not significant"
    assert verdict(-1.0, 0.01, +1).startswith("contradicts")
    assert verdict(-1.0, float("nan"), +1) == "opposite direction, not significant"
    row = claim("x", [0.9, 0.8, 0.85], [0.7, 0.6, 0.65], +1, "A", "B")
    assert row["difference"] == pytest.approx(20.0) and "A 85.0 ± 5.0 vs B 65.0 ± 5.0" in row["measured"]
    assert mean_std([0.5]) == "50.0"
