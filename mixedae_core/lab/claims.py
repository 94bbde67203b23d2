"""Is a difference between runs real: per-seed values paired by seed, paired t-tests, Holm's correction
across a notebook's claims, and the verdict each claim earns against the paper's direction."""
import math

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.stats import nct, t, ttest_rel


def per_seed(table: pd.DataFrame, column: str, **where) -> np.ndarray:
    """`column` of the rows of `table` whose columns equal `where`, in seed order: the values a claim pairs by
    seed (each seed gives every method the same initial weights)."""
    for name, value in where.items():
        table = table[table[name] == value]
    return table.sort_values("seed")[column].to_numpy()


def _number(x: float, digits: int | None) -> str:
    return f"{x:.{digits}f}" if digits is not None else f"{x:.3g}"


def mean_std(values, scale=100.0, digits: int | None = 1) -> str:
    """'mean ± std' over seeds; digits None: three significant digits, for values of any magnitude."""
    v = np.asarray(values, dtype=float) * scale
    if len(v) < 2:
        return _number(v.mean(), digits)
    std = v.std(ddof=1)
    if std <= 1e-9 * np.abs(v).max():  # equal values up to float rounding (0.1 + 0.2 vs 0.3)
        std = 0.0
    return f"{_number(v.mean(), digits)} ± {_number(std, digits)}"


def paired_test(a, b) -> float:
    """Two-sided paired t-test p-value of a vs b over seeds; nan with fewer than 2 pairs. Differences that are
    the same in every seed (no spread, so no t statistic) are decided explicitly: p = 0 when that difference
    is non-zero (the same sign and size in every seed), 1 when it is zero."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = a - b
    if len(d) < 2:
        return float("nan")
    if np.allclose(d, d[0], rtol=1e-9, atol=1e-12):
        return 0.0 if abs(d[0]) > 1e-12 else 1.0
    return float(ttest_rel(a, b).pvalue)


def detectable_gap(a, b, alpha: float = 0.05, power: float = 0.8) -> float:
    """The power line: the smallest true mean gap (a - b, in their units) that a two-sided paired t-test at `alpha`
    detects with probability `power`, given the spread of the paired differences measured (noncentral t); nan with
    fewer than 2 pairs or no spread. A gap this large or larger would rarely hide behind "not significant"."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    if n < 2 or not d.std(ddof=1) > 1e-9 * max(np.abs(d).max(), 1e-12):  # one difference, up to float rounding
        return float("nan")
    df, critical = n - 1, t.ppf(1 - alpha / 2, n - 1)

    def shortfall(effect):  # power of the test at standardised effect `effect`, minus the power asked for
        shift = effect * math.sqrt(n)
        return nct.sf(critical, df, shift) + nct.cdf(-critical, df, shift) - power

    high = 1.0
    while shortfall(high) < 0:
        high *= 2
    if math.isnan(shortfall(high)):  # noncentral t past scipy's range (2 or 3 pairs): the normal-shift approximation
        return (critical + t.ppf(power, df)) / math.sqrt(n) * d.std(ddof=1)
    return brentq(shortfall, 1e-9, high) * d.std(ddof=1)


def holm(p_values) -> list[float]:
    """Holm-Bonferroni adjusted p-values (nan stays nan and does not count among the tests)."""
    p = np.asarray(p_values, dtype=float)
    tested = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(len(p), np.nan)
    running = 0.0
    for rank, i in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (len(tested) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


AT_FLOOR = "at floor: the models do not use their input yet"
NO_VERDICT = "reported, no verdict"


def verdict(diff: float, p: float, paper_sign: int, alpha: float = 0.05, floor_gap: float | None = None) -> str:
    """What a measured difference says about a claim whose direction is `paper_sign` (+1 / -1). p is the
    (adjusted) p-value. floor_gap: how far the models' pretext loss lies below their content-blind floor
    (the smaller of the two); a pretext effect larger than that gap cannot be read."""
    if floor_gap is not None and floor_gap < abs(diff):
        return AT_FLOOR
    if diff == 0 or math.isnan(diff):
        return "no difference measured"
    agrees = np.sign(diff) == paper_sign
    significant = not math.isnan(p) and p < alpha
    if agrees:
        return "reproduces (paper's direction, p < %.2f)" % alpha if significant else \
            "paper's direction, not significant"
    return "contradicts (opposite direction, p < %.2f)" % alpha if significant else \
        "opposite direction, not significant"


def claim(text: str, a, b, paper_sign: int, label_a: str, label_b: str, scale=100.0, unit="points",
          floor_gap: float | None = None, reference: str = "") -> dict:
    """One headline row: the paper says (a - b) has sign `paper_sign`; a and b are per-seed values.
    floor_gap (in a's units, before `scale`): see `verdict`. reference: the floor or baseline to read the
    numbers against (floor_gap fills it when not given). The verdict is final once the notebook's claims
    are adjusted together (`adjusted`)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    digits = 1 if scale >= 100 else None  # percentages to 0.1; losses and rates to three significant digits
    diff = float((a - b).mean()) * scale
    p = paired_test(a, b) if len(a) == len(b) else float("nan")
    gap = None if floor_gap is None else floor_gap * scale
    spread = max(a.std(ddof=1), b.std(ddof=1)) * scale if min(len(a), len(b)) >= 2 else float("nan")
    detectable = detectable_gap(a, b) * scale if len(a) == len(b) else float("nan")
    return {"claim": text,
            "measured": f"{label_a} {mean_std(a, scale, digits)} vs {label_b} {mean_std(b, scale, digits)} "
                        f"({'+' if diff >= 0 else ''}{_number(diff, None if digits is None else digits + 1)}"
                        f"{' ' + unit if unit else ''})",
            "difference": diff, "p_value": p, "seeds": len(a), "unit": unit, "seed_spread": spread,
            "detectable_gap": detectable,
            "paper_sign": paper_sign, "floor_gap": gap,
            "reference": reference or ("" if gap is None else f"models {gap:.3g} below their content floor"),
            "verdict": verdict(diff, p, paper_sign, floor_gap=gap)}


def unvalidated(c: dict, reason: str) -> dict:
    """A claim reported without a verdict, because its measure failed a check that has nothing to do with the
    paper (`reason`): it keeps its numbers and leaves Holm's correction."""
    return {k: v for k, v in c.items() if k != "paper_sign"} | {"verdict": f"{NO_VERDICT}: {reason}"}


def reported(text: str, measured: str, difference: float, reason: str) -> dict:
    """A single measurement set beside a claim whose setting it does not share (`reason`): no test, no verdict."""
    return {"claim": text, "measured": measured, "difference": difference, "p_value": float("nan"), "seeds": 1,
            "verdict": f"{NO_VERDICT}: {reason}"}


def adjusted(claims: list[dict]) -> list[dict]:
    """A notebook's claims with Holm-adjusted p-values across them and the verdicts read from those. Rows
    without a paper direction (a number reported outside the paper's setting) keep their own verdict."""
    p_adjusted = holm([c["p_value"] if "paper_sign" in c else float("nan") for c in claims])
    out = []
    for c, p in zip(claims, p_adjusted):
        c = {**c, "p_adjusted": p}
        if "paper_sign" in c:
            c["verdict"] = verdict(c["difference"], p, c["paper_sign"], floor_gap=c.get("floor_gap"))
        out.append(c)
    return out


def headline(verdicts) -> str:
    """One sentence over claims' verdicts that counts significant results only (numbers reported without a
    verdict do not count as claims)."""
    verdicts = [v for v in verdicts if not v.startswith("reported")]
    reproduces = sum(v.startswith("reproduces") for v in verdicts)
    contradicts = sum(v.startswith("contradicts") for v in verdicts)
    at_floor = sum(v == AT_FLOOR for v in verdicts)
    floor = f"; {at_floor} at the content floor" if at_floor else ""
    if not reproduces + contradicts:
        return f"**None of {len(verdicts)} claims is significant** after Holm's correction within each notebook{floor}."
    return (f"**{reproduces + contradicts} of {len(verdicts)} claims are significant** after Holm's correction within "
            f"each notebook: {reproduces} in the paper's direction, {contradicts} against it{floor}.")


def against_spread(c: dict, knn_spread: float | None) -> str:
    """Whether a claim's effect exceeds the seed spread: accuracy-like effects (in points) against the headline
    kNN's spread, others against the spread of their own per-seed values."""
    if "unit" not in c:
        return ""
    if "points" in c["unit"] and knn_spread is not None and not math.isnan(knn_spread):
        spread, name = knn_spread, "the headline kNN's seed spread"
    elif not math.isnan(c["seed_spread"]):
        spread, name = c["seed_spread"], "its seed spread"
    else:
        return "; one seed, no spread to compare with"
    size = "larger" if abs(c["difference"]) > spread else "not larger"
    return f"; |effect| {abs(c['difference']):.3g} is {size} than {name} ({spread:.3g})"


def measure_check(scores: pd.Series, trivial: list[str], checks: list[str]) -> tuple[bool, str]:
    """(passes, a conclusion line): does the measure pass its validation, oracle >= positive control > every
    trivial baseline (`scores` by baseline name; `checks` = [oracle, positive control])? A measure that fails
    cannot tell a model that finds the object from a map that needs no model."""
    best = scores[trivial].idxmax()
    if len(checks) < 2:
        return False, (f"- Check of the measure: no positive control was measured (`control_epochs` = 0); best "
                       f"trivial baseline {best} {100 * scores[best]:.1f}.")
    oracle, control = (scores[name] for name in checks)
    holds = oracle >= control > scores[best]
    return holds, (f"- Check of the measure: oracle {100 * oracle:.1f} ≥ positive control {100 * control:.1f} > "
                   f"best trivial baseline ({best}) {100 * scores[best]:.1f}: "
                   f"**{'holds' if holds else 'does not hold'}**"
                   + ("." if holds else "; the models' scores on this variant are reported without a verdict."))
