"""What an ablation notebook calls first and last: `start` checks the parameters papermill injected, sets
the figures' theme and opens the notebook's Suite; `conclude` writes its claims and states its conclusion.
`make reproduce` reads the parameters a notebook declares from here too."""
import ast
import math
import os
import re
import sys
from pathlib import Path

import pandas as pd
import seaborn as sns
from IPython import get_ipython
from IPython.display import Markdown

from ..data import DatasetError
from ..runfiles import CheckpointError, RunFileError
from .claims import adjusted, against_spread
from .provenance import REPO
from .suite import Suite

NOTEBOOK_DIR = REPO / "notebooks"
WRITE_RESULTS = "MIXEDAE_WRITE_RESULTS"  # "1" in the notebooks `make reproduce` executes: only they write results/
# The user's input or the machine's state, not a bug: shown as one line. A ValueError or FileNotFoundError (often
# a value refused, sometimes a bug) keeps its frames.
INPUT_ERRORS = (DatasetError, RunFileError, CheckpointError)
# The parameters every notebook declares whose defaults (None) do not tell their type: (types, in words).
PARAMETER_TYPES = {"seeds": ((list, type(None)), "a list of integers such as [0, 1, 2], or None for the preset's seeds"),
                   "runs_root": ((str, type(None)), "a folder path, or None for runs/ in the repository"),
                   "dataset": ((str, type(None)), "a dataset such as cifar10 or imagefolder:PATH, or None for the "
                                                  "preset's")}


def notebook_parameters(path: Path, defaults: bool = False):
    """The names the notebook's parameters cell declares or, with `defaults`, {name: default value}."""
    import papermill  # seconds to import, and only reading or running a notebook needs it
    declared = papermill.inspect_notebook(str(path))
    return {name: ast.literal_eval(p["default"]) for name, p in declared.items()} if defaults else set(declared)


def check_injected_parameters(notebook: str):
    """Parameters papermill injected into this notebook (its '# Parameters' cell) that the notebook does not
    declare, or of another type than declared, are errors: papermill itself only logs a warning and runs the
    defaults."""
    shell = get_ipython()
    injected = [cell for cell in (shell.user_ns.get("In", []) if shell else []) if cell.startswith("# Parameters")]
    if not injected:
        return
    declared = notebook_parameters(NOTEBOOK_DIR / f"{notebook}.ipynb", defaults=True)
    names = [t.id for node in ast.parse(injected[-1]).body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)]
    # a refused parameter is the user's input, not a bug: its one sentence without the frames of this check
    shell.InteractiveTB.set_mode(mode="Minimal")
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise ValueError(f"notebook {notebook} has no parameter(s) {', '.join(unknown)}; it declares "
                         f"{', '.join(declared)}")
    for name in names:
        value, default = shell.user_ns[name], declared[name]
        expected, words = PARAMETER_TYPES.get(name) or (
            (int, float) if isinstance(default, float) else type(default), f"a value like its default {default!r}")
        if not isinstance(value, expected) or (isinstance(value, bool) and not isinstance(default, bool)):
            raise ValueError(f"notebook parameter {name} takes {words}, got {value!r}")
        if type(default) is int and default >= 1 and value < 1:  # a count (images, steps)
            raise ValueError(f"notebook parameter {name} counts something: it takes an integer >= 1, got {value!r}")
    shell.InteractiveTB.set_mode(mode="Context")  # IPython's default for the notebook's own errors


def in_notebook_terms(message: str, parameters) -> str:
    """Command-line advice (`--device cpu`) as the notebook's own (`device = 'cpu'` in the parameters cell), for
    the options that are notebook parameters."""
    def parameter(match):
        name, value = match.groups()
        if name not in parameters:
            return match.group(0)
        return f"{name} = {value!r} in the parameters cell (papermill: -p {name} {value})"
    return re.sub(r"--(\w+) ([\w:/.\-]*[\w/])", parameter, message)


def show_errors_in_notebook_terms(shell, parameters):
    """The notebook's refusals (bad input, a full disk) say what to change in the notebook, not on a command line."""
    def handler(shell, etype, value, tb, tb_offset=None):
        message = in_notebook_terms(str(value), parameters)
        frames = [] if issubclass(etype, INPUT_ERRORS) else \
            shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset)[:-1]
        sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb  # for %debug
        shell._showtraceback(etype, message, frames + [f"{etype.__name__}: {message}"])  # papermill reads this
    shell.set_custom_exc((ValueError, FileNotFoundError, *INPUT_ERRORS), handler)


def start(notebook: str, preset: str, seeds=None, device: str = "auto", out_dir: str = "results",
          runs_root: str | None = None, dataset: str | None = None) -> Suite:
    """The first cell of every notebook: the parameters checked, the plotting theme and the notebook's Suite.
    Run by hand (not by `make reproduce`), its tables, figures and new records go to <out_dir>/interactive/, so
    exploring leaves the committed results as they are."""
    shell = get_ipython()
    if shell is not None:
        show_errors_in_notebook_terms(shell, notebook_parameters(NOTEBOOK_DIR / f"{notebook}.ipynb"))
    check_injected_parameters(notebook)
    sns.set_theme(style="whitegrid", context="notebook")
    by_hand = os.environ.get(WRITE_RESULTS) != "1"
    suite = Suite(preset, seeds, device, out_dir, notebook=notebook, runs_root=runs_root, dataset=dataset,
                  by_hand=by_hand)
    if by_hand:
        print(f"Run by hand: tables, figures and new records go to {suite.written} (git-ignored); "
              f"`make reproduce` writes {suite.out}.")
    return suite


def conclude(suite: Suite, claims: list[dict], *notes: str) -> Markdown:
    """The notebook's verdicts on the paper's claims, Holm-adjusted across them, written for results/README.md's
    headline table, and its `conclusion` against the preset's headline kNN seed spread."""
    suite.save_table(pd.DataFrame(adjusted(claims)), f"claims_{suite.notebook}")
    return conclusion(claims, *notes, knn_spread=suite.knn_spread(), knn_noise=suite.knn_noise())


def conclusion(claims: list[dict], *notes: str, knn_spread: float | None = None,
               knn_noise: float | None = None) -> Markdown:
    """The notebook's closing text, computed from its numbers: the headline kNN's seed spread, one line per
    claim (with its effect against that spread, see `against_spread`), then the notes."""
    lines = ["### Conclusion (computed from the numbers above)", ""]
    if knn_spread is not None:
        lines += [f"Seed spread of the headline kNN [CLS] (the largest std over seeds among MAE, naive and "
                  f"MixedAE): **{knn_spread:.2f} points**."
                  + (f" The evaluation's own noise on it (binomial standard error of a test accuracy on the "
                     f"records' test images): {knn_noise:.2f} points." if knn_noise is not None else ""), ""]
    lines += [f"- {c['claim']}: {c['measured']}" + _p_text(c) + against_spread(c, knn_spread) +
              f": **{c['verdict']}**." for c in adjusted(claims)]
    return Markdown("\n".join(lines + ([""] + list(notes) if notes else [])))


def _p_text(c: dict) -> str:
    if math.isnan(c["p_value"]):
        return ""
    holm_p = c.get("p_adjusted", float("nan"))
    return f", p = {c['p_value']:.3f}" + ("" if math.isnan(holm_p) else f" (Holm {holm_p:.3f})")
