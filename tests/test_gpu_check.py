"""bench/gpu_check.py (make gpu-check): on a machine without a GPU it says so and exits 0."""
import subprocess
import sys
from pathlib import Path

import pytest

from bertlib import runtime

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def test_without_a_gpu_it_says_so_and_exits_0():
    if runtime.cuda_device_count() > 0:
        pytest.skip("this machine has a GPU: gpu_check would run its real checks")
    proc = subprocess.run([sys.executable, "bench/gpu_check.py"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no usable CUDA GPU here" in proc.stdout and runtime.no_gpu_reason() in proc.stdout
    assert "nothing to check on this machine" in proc.stdout


def test_the_table_has_every_column(capsys):
    import gpu_check

    row = {"run": "tiny-1gpu-eager-fp32", "gpus": 1, "mode": "eager", "precision": "fp32",
           "samples/s": "1234.5", "loss": "10.1234", "resume identical": "yes",
           "peak memory": "1234 MiB", "status": "ok"}
    gpu_check.print_table([row])
    lines = capsys.readouterr().out.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == list(row)
    assert "| tiny-1gpu-eager-fp32 |" in lines[2] and "1234 MiB" in lines[2]


def test_make_gpu_check_runs_the_script():
    make = (ROOT / "Makefile").read_text()
    assert "gpu-check: $(STAMP)\n\t$(PY) bench/gpu_check.py" in make
    assert "make gpu-check" in (ROOT / "README.md").read_text()
