"""Fault drill: SIGKILL `r1vflow run` (its whole process group) right after a stage printed a
given checkpoint line, then run the same command again; prints JSON (when it was killed, the
rerun's seconds and each stage's status, cached flag and resumed_from_step).

    .venv/bin/python scripts/kill_and_rerun.py --output-dir /tmp/drill --stage sft --step 3 \\
        pipelines/configs/smoke.yaml --set sft.checkpoint_every=1

docs/reliability.md's fault table has its result on the smoke preset.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--stage", required=True, help="Stage whose checkpoint line to wait for.")
    parser.add_argument("--step", type=int, required=True, help="Kill after this step's line.")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items()
           if k != "MLFLOW_TRACKING_URI" and not k.startswith("R1VFLOW_")}
    cmd = [sys.executable, "-m", "r1vflow.cli", "run", str(args.experiment), "--output-dir",
           str(args.output_dir), *[x for s in args.sets for x in ("--set", s)]]
    started = time.time()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO)
    log, line, killed_at = args.output_dir / "logs" / f"{args.stage}.log", \
        f"checkpoint: {args.stage} step {args.step}\n", None
    while proc.poll() is None:
        if log.exists() and line in log.read_text(errors="replace"):
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = round(time.time() - started, 1)
            break
        time.sleep(0.2)
    proc.wait()
    rerun_started = time.time()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    summary = json.loads((args.output_dir / "summary.json").read_text())
    print(json.dumps({
        "killed_at_s": killed_at, "killed_rc": proc.returncode, "rerun_rc": rerun.returncode,
        "rerun_s": round(time.time() - rerun_started, 1),
        "stages": {name: {"status": s["status"], "cached": s.get("cached"),
                          "resumed_from_step": s.get("metrics", {}).get("resumed_from_step")}
                   for name, s in summary["stages"].items()}}, indent=1))


if __name__ == "__main__":
    main()
