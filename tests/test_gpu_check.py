"""benchmarks/gpu_check.py --dry-run: the GPU check's code, run on the CPU at tiny sizes so it cannot rot
while no GPU is at hand (on a GPU the same script measures the CUDA path; see the README)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from launching import ROOT, job_env


def test_gpu_check_dry_run_passes_every_section(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(report)],
        capture_output=True, text=True, timeout=900, cwd=ROOT, env=job_env(OMP_NUM_THREADS="2"),
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    text = report.read_text()
    for title in ("1. Correctness", "2. Optimizer step", "3. Training", "4. Stock Lightning"):
        assert f"## {title}" in text, title
    verdicts = [
        line.rsplit("|", 2)[-2].strip() for line in text.splitlines() if line.startswith("| float32 |")
    ]
    verdicts += [
        line.rsplit("|", 2)[-2].strip() for line in text.splitlines() if line.startswith("| bfloat16 |")
    ]
    assert verdicts == ["ok"] * 14, text  # 2 dtypes x 7 cases (5 of Algorithm 1, 2 of the Keras variant)
    assert "| DeepSpeed, no ZeRO, 1 rank |" in text and "| ZeRO-2, 1 rank |" in text
    assert "Failed checks: none" in text


def test_gpu_check_without_a_gpu_says_to_use_dry_run() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=job_env(),
    )  # fmt: skip
    assert proc.returncode == 2 and "--dry-run" in proc.stderr, proc.stderr
