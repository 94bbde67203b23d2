#!/usr/bin/env bash
# What README's `make reproduce PRESET=cpu` costs a user who clones the repository: HEAD is cloned into an empty
# folder (the committed records, no run cache, no .venv), `make venv data` and `make reproduce PRESET=cpu` run
# there and are timed, and results/tables/cpu/fresh_clone.json here receives the times, the clone's campaign log
# and its provenance (README's reproduce-time block quotes it). Run it on an otherwise idle machine: the
# campaign's runs are timed. Only the timing comes back; the clone's results are deleted with it.
#
#   scripts/time_fresh_clone.sh
set -euo pipefail
repo=$(git rev-parse --show-toplevel)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git clone -q "$repo" "$tmp/repo"
cd "$tmp/repo"
campaigns=$(python3 -c "import json; print(len(json.load(open('results/tables/cpu/campaign_log.json'))))")
start=$SECONDS
make venv data > "$tmp/setup.log" 2>&1 || { tail -n 30 "$tmp/setup.log"; exit 1; }
setup=$((SECONDS - start))
make reproduce PRESET=cpu > "$tmp/reproduce.log" 2>&1 || { tail -n 30 "$tmp/reproduce.log"; exit 1; }
CAMPAIGNS=$campaigns SETUP=$setup REPRODUCE=$((SECONDS - start - setup)) OUT="$repo/results/tables/cpu/fresh_clone.json" \
  .venv/bin/python - <<'RECORD'
import json, os
from pathlib import Path
from mixedae_core.lab.campaign import campaign_plan
from mixedae_core.lab.provenance import provenance
from mixedae_core.lab.suite import Suite

tables = Path("results/tables/cpu")
new = json.loads((tables / "campaign_log.json").read_text())[int(os.environ["CAMPAIGNS"]):]
notebooks = json.loads((tables / "reproduce_log.json").read_text())
if new:
    campaign = new[-1]
else:  # a campaign that found every planned record current (and every drawn model kept) has nothing to log
    planned = len(campaign_plan(Suite("cpu", progress=False)))
    campaign = {"planned": planned, "recorded_before": planned, "trained": [], "resumed": [], "evaluated": [],
                "wall_seconds": int(os.environ["REPRODUCE"]) - sum(notebooks.values())}
record = {**provenance("cpu"), "setup_seconds": int(os.environ["SETUP"]),
          "reproduce_seconds": int(os.environ["REPRODUCE"]), "campaign": campaign, "notebook_seconds": notebooks}
Path(os.environ["OUT"]).write_text(json.dumps(record, indent=1) + "\n")
print(f"{os.environ['OUT']}: setup {record['setup_seconds']} s, make reproduce {record['reproduce_seconds']} s")
RECORD
