"""Check that `pip install '.[gpu]'` resolves on a CUDA Linux machine without backtracking.

Runs pip's resolver (`pip install --dry-run --ignore-installed --report`) for the project with
its `gpu` extra, reading wheel metadata only (nothing is installed or kept), `--isolated` from
this machine's pip settings (their local CPU torch wheel and caps are not a CUDA machine's), and
prints one JSON
line: the vllm, torch, torchvision and transformers versions it chose, how many vllm versions it
looked at, and the seconds it took. Exits 1 when pip fails, when it backtracked through vllm
releases, or when vllm is not in the answer.

    python scripts/check_gpu_extra.py
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run",
             "--ignore-installed", "--no-cache-dir", "--report", str(report), "-v",
             f"{ROOT}[gpu]"],
            capture_output=True, text=True, timeout=1800)
        seconds = round(time.monotonic() - start, 1)
        log = proc.stdout + proc.stderr
        if proc.returncode != 0:
            tail = "\n".join(log.splitlines()[-15:])
            print(f"check-gpu-extra: pip could not resolve '.[gpu]' (exit {proc.returncode}):\n"
                  f"{tail}", file=sys.stderr)
            return 1
        chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                  for item in json.loads(report.read_text())["install"]}
    # pip logs one "Collecting vllm==X" / "Using cached vllm-X" per candidate it looks at.
    tried = sorted(set(re.findall(r"vllm-(\d+\.\d+\.\d+)[^ ]*\.(?:whl|tar\.gz)", log)))
    result = {"vllm": chosen.get("vllm"), "torch": chosen.get("torch"),
              "torchvision": chosen.get("torchvision"),
              "transformers": chosen.get("transformers"), "vllm_versions_seen": tried,
              "seconds": seconds}
    print(json.dumps(result))
    if result["vllm"] is None:
        print("check-gpu-extra: vllm is not in pip's answer", file=sys.stderr)
        return 1
    if "+cpu" in (result["torch"] or ""):
        print(f"check-gpu-extra: pip chose a CPU torch ({result['torch']}), not vLLM's CUDA one",
              file=sys.stderr)
        return 1
    if "backtracking" in log.lower() or len(tried) > 1:
        print(f"check-gpu-extra: pip backtracked through vllm releases: {tried}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
