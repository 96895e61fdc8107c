#!/usr/bin/env python
"""Write the README's verdicts of a study from its report (every number looked up, none typed).

    python scripts/study_verdicts.py                       # results/reference/report -> README.md
    python scripts/study_verdicts.py --study study         # results/study/report -> README.md
    python scripts/study_verdicts.py --check               # exit 1 if the README differs from the report

It reads the study's claims (configs/study/claims.yaml for results/reference, claims_cifar10.yaml
for results/study), looks each one up in the report's CSV files (wab.analysis.claims) and replaces
the part of README.md between the study's markers (``<!-- reference-verdicts ...``).
It warns when training code (wab/, methods/, the run configs) changed after the commit that trained
the runs: the study should then be run again on the commit that ships it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

from wab.analysis.claims import claims_markdown, load_claims, replace_block

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = {"reference": "claims.yaml", "study": "claims_cifar10.yaml"}  # results/<study>: its claims
TRAINING = ["wab", "methods", "configs/config.yaml", "configs/method", "configs/model", "configs/data",
            "configs/optim", "configs/trainer"]  # fmt: skip


def changed_since(commits: list[str]) -> list[str]:
    """Training files that differ between the runs' commits and the working tree."""
    out = set()
    for c in commits:
        p = subprocess.run(["git", "diff", "--name-only", c, "--", *TRAINING], cwd=ROOT, capture_output=True, text=True)
        out.update(p.stdout.split() if p.returncode == 0 else [f"(commit {c} unknown here)"])
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", default="reference", choices=sorted(CLAIMS), help="results/STUDY (default reference)")
    ap.add_argument("--report", help="the report (default results/STUDY/report)")
    ap.add_argument("--claims", help="the claims (default configs/study/claims.yaml or claims_cifar10.yaml)")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--check", action="store_true", help="exit 1 if the README's section is not what the report gives")
    args = ap.parse_args()
    args.report = args.report or str(ROOT / "results" / args.study / "report")
    args.claims = args.claims or str(ROOT / "configs" / "study" / CLAIMS[args.study])
    block = claims_markdown(args.report, load_claims(args.claims))
    readme = Path(args.readme)
    text = replace_block(readme.read_text(), block, args.study)
    commits = sorted(set(pd.read_csv(Path(args.report) / "runs.csv", low_memory=False)["git_commit"].dropna()))
    if changed := changed_since(commits):
        print(f"warning: training code changed since the runs' commit: {', '.join(changed)}", file=sys.stderr)
    if args.check:
        same = text == readme.read_text()
        print("the README's verdicts are the report's" if same else "the README's verdicts differ from the report's")
        return 0 if same else 1
    readme.write_text(text)
    print(f"wrote the verdicts of {args.report} into {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
