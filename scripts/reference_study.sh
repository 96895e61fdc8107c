#!/usr/bin/env bash
# The reference study committed under results/reference/ (configs/sweep/reference.yaml): every
# method at its authors' defaults with its controls, 10 seeds, Fashion-MNIST with a small MLP at 8
# and 32 epochs and the CNN on 6,000 images, through `wab sweep --cluster local` (two runs at a
# time on 2 CPU cores), then the report (paired verdicts, claims between methods, modelled network
# time) and, for results/reference and results/study, the README's verdicts
# (scripts/study_verdicts.py). It records how long it took, on what, at which commit
# (DIR/study.json) and says so at the end.
#
#   WAB_DATA=../shared/data bash scripts/reference_study.sh              # finish or refresh results/reference
#   WAB_DATA=../shared/data bash scripts/reference_study.sh --retrain DIR
#   WAB_DATA=../shared/data bash scripts/reference_study.sh --study [SEEDS]   # the CIFAR-10 study, in parts
#
# --study trains configs/sweep/study.yaml into results/study (the regime with room to gain, issue
# 27): all of it, or only the seeds SEEDS (e.g. 0,1) as one part. It resumes where it stopped (a
# finished run is never trained again, an interrupted one resumes from its checkpoint); commit
# results/study after each part. The report covers the parts trained so far.
#
# --retrain DIR trains every run again from scratch into DIR (tracked files are not touched),
# writes DIR/report and compares DIR with results/reference run by run (`wab compare`): every
# metric equal, or the differences listed (exit status 1). CPU results are bit-for-bit only on the
# same torch build and thread count (the sweep uses 1 thread per run).
set -euo pipefail
wab="${WAB:-.venv/bin/wab}"
python="${PYTHON:-.venv/bin/python}"
out=results/reference
config=reference
part=""  # --study SEEDS: the seeds of this part
if [ "${1:-}" = "--study" ]; then
  out=results/study
  config=configs/sweep/study.yaml
  if [ -n "${2:-}" ]; then
    part="$2"
    [[ "$2" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "--study SEEDS: seeds as 0,1,2, got $2" >&2; exit 2; }
    mkdir -p "$out"
    # the same runs (a run's id is its config) for the seeds of the parts trained so far and these: the
    # finished ones are left alone, and the sweep's manifest keeps naming every run of the study
    seeds=$("$python" -c 'import json, os, sys; p = sys.argv[1] + "/study.json"
parts = json.load(open(p)).get("parts", []) if os.path.exists(p) else []
print(", ".join(map(str, sorted({s for q in parts for s in q["seeds"] or []} | set(map(int, sys.argv[2].split(",")))))))' "$out" "$2")
    config="$out/study_part.yaml"
    sed "s|^  seed: .*|  seed: [$seeds]|" configs/sweep/study.yaml > "$config"
    grep -q "^  seed: \[$seeds\]" "$config" || { echo "configs/sweep/study.yaml has no seed line to set" >&2; exit 2; }
  fi
elif [ "${1:-}" = "--retrain" ]; then
  out="${2:?usage: reference_study.sh --retrain DIR}"
  if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
    echo "$out is not empty: choose a new directory to retrain into" >&2
    exit 2
  fi
  mkdir -p "$out"
  config="$out/reference.yaml"
  sed "s|^out_dir: .*|out_dir: $out|" configs/sweep/reference.yaml > "$config"
fi
start=$(date +%s)
launched=$("$wab" sweep "$config" --cluster local | tee /dev/stderr)
while "$wab" status "$out" | tail -1 | grep -qE "running|queued"; do  # until no run trains or waits
  sleep 30
done
minutes=$(( ($(date +%s) - start) / 60 ))
# a launch that trained everything writes the study's figures; one that trained some runs again (their
# directories removed) adds a refresh to them; a part (--study SEEDS) is added to the parts trained so
# far, the study's minutes their sum; one that trained nothing keeps them
"$python" - "$out" "$minutes" "$(grep -E "^sweep .*: [0-9]+ runs, " <<< "$launched" | tail -1)" "$part" <<'EOF'
import json, os, platform, re, subprocess, sys
out, minutes, summary, part = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
done, submitted = (int(re.search(p, summary).group(1)) for p in (r"(\d+) already finished", r"(\d+) submitted"))
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
path = os.path.join(out, "study.json")
fresh = {"minutes": minutes, "machine": f"{os.cpu_count()} CPU cores ({platform.machine()})", "workers": 2,
         "commit": commit}
if not submitted and os.path.exists(path):
    sys.exit(0)
if part:  # one part of a study trained by seeds: a study written before parts becomes its first part
    study = json.load(open(path)) if os.path.exists(path) else dict(fresh, minutes=0)
    if "parts" not in study:
        study["parts"] = [{"seeds": None, "runs": None, "already_finished": 0, "minutes": study["minutes"],
                           "commit": study["commit"]}] if study["minutes"] else []
    study["parts"].append({"seeds": [int(s) for s in part.split(",")], "runs": submitted, "already_finished": done,
                           "minutes": minutes, "commit": commit})
    study["minutes"] = sum(p["minutes"] for p in study["parts"])
elif submitted and not done or not os.path.exists(path):
    study = fresh
else:
    study = json.load(open(path))
    study.setdefault("refreshes", []).append({"runs": submitted, "minutes": minutes, "commit": commit})
open(path, "w").write(json.dumps(study, indent=1) + "\n")
EOF
versus=(--versus wash:papa --versus aswa:swa --versus twa:swa)
if [ "$out" = results/study ]; then  # each paper's own baseline (configs/study/claims_cifar10.yaml)
  versus+=(--versus swa:independent)
  for m in local_sgd diloco sparta gossip lookaround; do  # against synchronous data-parallel training
    versus+=(--versus "$m:local_sgd (every_steps=1)")
  done
fi
"$wab" report "$out" --network "${versus[@]}"
if [ "$out" = results/reference ]; then
  "$python" scripts/study_verdicts.py
elif [ "$out" = results/study ]; then
  "$python" scripts/study_verdicts.py --study study
  echo "results/study: commit it (git add results/study; checkpoints, models and logs are ignored)"
else
  "$wab" compare results/reference "$out"
fi
echo "reference study: $minutes minutes of training (see $out/study.json)"
