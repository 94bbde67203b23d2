"""The project's own setup files agree with each other."""
import re

import yaml

from conftest import REPO


def pins(lines):
    return {m[1].lower(): m[2] for line in lines if (m := re.match(r"\s*-?\s*([A-Za-z0-9_.\-]+)==(\S+)", line))}


def test_environment_yml_mirrors_requirements():
    requirements = pins((REPO / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert requirements, "requirements.txt pins nothing"
    assert pins(pip_section) == requirements
    assert requirements["torch"] == "2.14.1" and requirements["torchvision"] == "0.29.1"


def test_no_file_points_outside_the_repository():
    import subprocess
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not files:
        import pytest
        pytest.skip("not a git checkout")
    climbing = re.compile(r"(?:\.\./)+[A-Za-z_][\w./-]*|REPO\.parent\b")
    for name in files:
        path = REPO / name
        if name.startswith("results/") or path.suffix in (".pt", ".png") or not path.is_file():
            continue
        for found in climbing.finditer(path.read_text(errors="ignore")):
            # a relative link from a subfolder may climb back to the root (docs/ -> ../results/), never above it
            inside = found[0].startswith("../") and (path.parent / found[0]).resolve().is_relative_to(REPO.resolve())
            assert inside, f"{name} refers to a path outside the repository: {found[0]}"
