"""Which device a run gets: no silent fall back to CPU processes, no CPU-only settings on a GPU job.

The GPU side is checked with the detection mocked (this machine has no GPU)."""
import os

import pytest

from bertlib import runtime

CPU_ONLY = ("ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD", "OPENBLAS_CORETYPE")


@pytest.fixture
def clean_env(monkeypatch):
    for name in (*CPU_ONLY, "GLOG_minloglevel"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runtime, "_keep_freed_buffers", lambda: None)
    return monkeypatch


def test_gpu_presence_reads_every_device_file(monkeypatch):
    """A container given GPU 3 only has /dev/nvidia3: that is a GPU machine too."""
    monkeypatch.setattr(runtime.glob, "glob", lambda pattern: ["/dev/nvidia3"]
                        if pattern == "/dev/nvidia[0-9]*" else [])
    assert runtime.gpu_device_files() == ["/dev/nvidia3"]
    assert runtime.gpu_present()
    monkeypatch.setattr(runtime.glob, "glob", lambda pattern: [])
    assert not runtime.gpu_present()


def test_cpu_only_settings_are_never_made_for_a_gpu_machine(clean_env):
    clean_env.setattr(runtime, "gpu_present", lambda: True)
    freed = []
    clean_env.setattr(runtime, "_keep_freed_buffers", lambda: freed.append(1))
    clean_env.setattr(runtime, "_choose_openblas_kernels", lambda: freed.append(2))
    made = runtime.apply_host_settings()
    assert made == ["GLOG_minloglevel"] and os.environ["GLOG_minloglevel"] == "2"  # ERRORs show
    assert not any(name in os.environ for name in CPU_ONLY)
    assert freed == []


def test_cpu_only_settings_are_made_without_a_gpu(clean_env):
    clean_env.setattr(runtime, "gpu_present", lambda: False)
    made = runtime.apply_host_settings()
    assert "ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD" in made and os.environ["GLOG_minloglevel"] == "3"


def test_user_settings_are_left_alone(clean_env):
    clean_env.setattr(runtime, "gpu_present", lambda: False)
    clean_env.setenv("ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD", "1")
    runtime.apply_host_settings()
    assert os.environ["ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD"] == "1"


def _gpus(monkeypatch, count, files=(), driver=None):
    monkeypatch.setattr(runtime, "cuda_device_count", lambda: count)
    monkeypatch.setattr(runtime, "gpu_device_files", lambda: list(files))
    monkeypatch.setattr(runtime.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(runtime, "_driver_version", lambda: driver)


def test_auto_with_several_processes_and_no_gpu_is_an_error_that_says_why(monkeypatch):
    _gpus(monkeypatch, 0)
    with pytest.raises(ValueError, match=r"--gpu_num_per_node 8: this machine shows no NVIDIA GPU"
                                         r".*--device cpu"):
        runtime.check_launch_devices("auto", 8)
    assert runtime.check_launch_devices("auto", 1) == "cpu"   # one process: the CPU, as before
    assert runtime.check_launch_devices("cpu", 8) == "cpu"    # asked for: fine


def test_a_driver_too_old_is_named(monkeypatch):
    _gpus(monkeypatch, 0, files=["/dev/nvidia0", "/dev/nvidia1"], driver="470.82.01")
    with pytest.raises(ValueError, match=r"driver 470.82.01 shows /dev/nvidia0, /dev/nvidia1, "
                                         r"but OneFlow counts 0 usable GPUs.*CUDA 11.7"):
        runtime.check_launch_devices("auto", 2)
    with pytest.raises(ValueError, match="--device cuda: the NVIDIA driver"):
        runtime.check_launch_devices("cuda", 1)


def test_more_processes_than_gpus_is_refused_before_launch(monkeypatch):
    _gpus(monkeypatch, 2, files=["/dev/nvidia0", "/dev/nvidia1"])
    assert runtime.check_launch_devices("auto", 2) == "cuda"
    assert runtime.check_launch_devices("cuda", 1) == "cuda"
    with pytest.raises(ValueError, match=r"--gpu_num_per_node 4, but OneFlow sees 2 GPU\(s\)"):
        runtime.check_launch_devices("auto", 4)
    with pytest.raises(ValueError, match="--device must be"):
        runtime.check_launch_devices("gpu", 1)


def test_a_rank_without_its_gpu_is_an_error(monkeypatch):
    _gpus(monkeypatch, 2)
    monkeypatch.setattr(runtime, "local_rank", lambda: 1)
    assert runtime.resolve_device("auto") == "cuda:1"
    monkeypatch.setattr(runtime, "local_rank", lambda: 2)
    with pytest.raises(RuntimeError, match="local rank 2 has no GPU"):
        runtime.resolve_device("cuda")
    _gpus(monkeypatch, 0)
    assert runtime.resolve_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="no usable GPU: this machine shows no NVIDIA GPU"):
        runtime.resolve_device("cuda")


def test_pretrain_cli_refuses_auto_with_two_processes_without_gpu(tmp_path):
    """On this machine (no GPU): the launching process says why and starts no process."""
    import subprocess
    import sys

    if runtime.cuda_device_count() > 0:
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, "-m", "bertlib.cli.pretrain", "--gpu_num_per_node", "2",
                           "--iter_num", "2", "--log_dir", str(tmp_path / "log"),
                           "--model_save_dir", str(tmp_path / "ck")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--device auto with --gpu_num_per_node 2" in proc.stderr
    assert "--device cpu" in proc.stderr
