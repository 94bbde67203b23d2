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
