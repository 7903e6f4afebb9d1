"""bertlib.runtime: OneFlow imports quietly, finds its CUDA libraries, and fails with useful messages."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from bertlib import runtime

NOISE = ("libibverbs", "ibv_fork_init", "CUDA driver version is insufficient")


def run_python(code: str, env_extra=None, cwd=None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter of this venv, capturing the real file descriptors 1 and 2."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLOG_minloglevel",)}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=cwd or Path(__file__).parent, timeout=300)


def test_import_model_prints_no_oneflow_noise():
    proc = run_python("""
        import bertlib.model
        import oneflow
        print("ok", oneflow.__version__)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok 0.9.0")
    for text in NOISE:
        assert text not in proc.stdout and text not in proc.stderr, f"{text!r} leaked: {proc.stderr}"


def test_plain_oneflow_import_is_noisy_so_the_previous_test_means_something():
    proc = run_python("import oneflow")
    assert proc.returncode == 0
    assert "libibverbs" in proc.stderr


def test_preload_finds_the_six_cuda_libraries_on_sys_path():
    loaded = runtime._preload_cuda_libraries()
    assert [Path(p).name for p in loaded] == [name for _, name in runtime._CUDA_LIBS]
    for path, (sub, _) in zip(loaded, runtime._CUDA_LIBS):
        assert Path(path).is_file() and f"nvidia/{sub}/lib" in path


def _site_without_nvidia(tmp_path: Path) -> Path:
    """A site directory whose oneflow cannot reach the nvidia-* wheels through its RPATH.

    The core's RPATH is ``$ORIGIN/../nvidia/...``. The loader resolves symlinks when it computes
    $ORIGIN, so the core library is hard-linked (same inode, new directory) and the rest symlinked;
    ``nvidia/`` stays behind in the venv's site-packages, reachable only through sys.path.
    """
    import oneflow

    real = Path(oneflow.__file__).resolve().parent
    site = tmp_path / "site"
    (site / "oneflow").mkdir(parents=True)
    for entry in real.iterdir():
        target = site / "oneflow" / entry.name
        if entry.name.startswith("_oneflow_internal") and entry.suffix == ".so":
            try:
                os.link(entry, target)
            except OSError as exc:
                pytest.skip(f"cannot hard-link OneFlow's core into {tmp_path} ({exc})")
        else:
            target.symlink_to(entry)
    libs = real.parent / "oneflow.libs"
    if libs.exists():
        (site / "oneflow.libs").symlink_to(libs)
    return site


def test_import_works_without_ld_library_path_when_nvidia_libs_live_elsewhere(tmp_path):
    site = _site_without_nvidia(tmp_path)
    env = {"PYTHONPATH": str(site), "LD_LIBRARY_PATH": ""}
    plain = run_python("import oneflow", env)
    # the simulation holds: OneFlow on its own cannot find cuDNN
    assert plain.returncode != 0 and "cannot open shared object file" in plain.stderr
    proc = run_python(f"""
        import re
        from bertlib.runtime import import_oneflow
        flow = import_oneflow()
        assert flow.__file__.startswith({str(site)!r}), flow.__file__
        print(flow.ones(3).sum().item())
        maps = open("/proc/self/maps").read()
        print(sorted(set(re.findall(r"/\\S*/(libcudnn_cnn_infer\\.so\\.8)", maps))))
    """, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["3.0", "['libcudnn_cnn_infer.so.8']"]
    for text in NOISE:
        assert text not in proc.stderr


def test_fd2_output_is_replayed_when_the_import_fails(tmp_path):
    fake = tmp_path / "fake" / "oneflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import os\nos.write(2, b'native loader said: no such symbol\\n')\nraise ImportError('core broken')\n")
    proc = run_python("""
        from bertlib.runtime import import_oneflow
        try:
            import_oneflow()
        except ImportError as exc:
            print("MESSAGE:", exc)
    """, {"PYTHONPATH": str(tmp_path / "fake")})
    assert "MESSAGE: core broken" in proc.stdout
    assert "native loader said: no such symbol" in proc.stdout  # in the exception, not lost
    assert "native loader said" not in proc.stderr


def _fake_noisy_oneflow(tmp_path: Path, fail: bool) -> Path:
    """A stand-in ``oneflow`` that is noisy the three ways the real one can be."""
    fake = tmp_path / "noisy" / "oneflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(textwrap.dedent(f"""
        import os, sys, warnings
        os.write(2, b"native: libibverbs not available\\n")        # C printf on fd 2
        print("python: glog-like line", file=sys.stderr)            # Python-level stderr
        warnings.warn("IProgress not found", UserWarning)           # what tqdm.auto does in a kernel
        if {fail!r}:
            raise ImportError("core broken")
        Tensor = object
    """))
    return tmp_path / "noisy"


@pytest.mark.parametrize("fail", [False, True])
def test_python_level_noise_is_held_back_too(tmp_path, fail):
    # In a notebook sys.stderr is the kernel's stream, not fd 2: stand in for it with a StringIO.
    proc = run_python("""
        import io, sys
        kernel_stream = io.StringIO()
        sys.stderr = kernel_stream
        from bertlib.runtime import import_oneflow
        try:
            import_oneflow()
            outcome = "imported"
        except ImportError as exc:
            outcome = f"failed: {exc}"
        sys.stderr = sys.__stderr__
        print("KERNEL STREAM:", repr(kernel_stream.getvalue()))
        print(outcome)
    """, {"PYTHONPATH": str(_fake_noisy_oneflow(tmp_path, fail))})
    assert proc.returncode == 0, proc.stderr
    assert "KERNEL STREAM: ''" in proc.stdout
    assert "libibverbs" not in proc.stderr and "IProgress" not in proc.stderr
    if fail:  # nothing is lost when it matters: all three kinds are in the error
        for text in ("core broken", "libibverbs not available", "glog-like line", "IProgress not found"):
            assert text in proc.stdout, text
    else:
        assert "imported" in proc.stdout


@pytest.fixture
def fresh_runtime(monkeypatch):
    """import_oneflow as if OneFlow had never been imported; the real module is restored afterwards."""
    monkeypatch.setattr(runtime, "_FLOW", None)
    monkeypatch.setitem(sys.modules, "oneflow", None)  # hides the loaded module from the fast path
    return runtime


def test_missing_oneflow_says_how_to_install(fresh_runtime, monkeypatch):
    def missing():
        raise ModuleNotFoundError("No module named 'oneflow'", name="oneflow")

    monkeypatch.setattr(fresh_runtime, "_import_with_fd2_silenced", missing)
    with pytest.raises(ImportError, match=r"oneflow==0\.9\.0.*Python 3\.10"):
        fresh_runtime.import_oneflow()


def test_other_missing_module_is_not_blamed_on_oneflow(fresh_runtime, monkeypatch):
    def missing():
        raise ModuleNotFoundError("No module named 'google.protobuf'", name="google.protobuf")

    monkeypatch.setattr(fresh_runtime, "_import_with_fd2_silenced", missing)
    with pytest.raises(ModuleNotFoundError, match="google.protobuf"):
        fresh_runtime.import_oneflow()


def test_stub_oneflow_is_refused(fresh_runtime, monkeypatch):
    stub = types.ModuleType("oneflow")
    stub.__version__ = "0.7.0"
    monkeypatch.setattr(fresh_runtime, "_import_with_fd2_silenced", lambda: stub)
    with pytest.raises(ImportError, match=r"0\.7\.0.*no compiled core.*Python 3\.10"):
        fresh_runtime.import_oneflow()


def test_missing_cuda_wheels_say_which_to_install():
    # In a subprocess: this path clears oneflow.* from sys.modules, which the test process needs.
    proc = run_python("""
        import bertlib.runtime as rt
        def broken():
            raise ImportError("libcudnn_cnn_infer.so.8: cannot open shared object file: No such file")
        rt._import_with_fd2_silenced = broken
        rt._preload_cuda_libraries = lambda: []
        try:
            rt.import_oneflow()
        except ImportError as exc:
            print(exc)
    """)
    assert "nvidia-cublas-cu11==11.10.3.66" in proc.stdout
    assert "nvidia-cudnn-cu11==8.5.0.96" in proc.stdout
    assert "libcudnn_cnn_infer.so.8" in proc.stdout


def test_resolve_device_on_this_machine():
    flow = runtime.import_oneflow()
    assert runtime.resolve_device("cpu") == "cpu"
    expected = "cuda:0" if flow.cuda.is_available() else "cpu"
    if runtime.local_rank() == 0:
        assert runtime.resolve_device("auto") == expected
    with pytest.raises(ValueError, match="--device"):
        runtime.resolve_device("tpu")
    if not flow.cuda.is_available():
        with pytest.raises(RuntimeError, match="no usable GPU"):
            runtime.resolve_device("cuda")


def test_cpu_runs_keep_numpy_buffers_off_huge_pages():
    """bertlib.runtime turns off NumPy's huge-page advice on CPU-only machines (see _keep_freed_buffers)."""
    import os

    import numpy as np

    from bertlib.runtime import import_oneflow

    import_oneflow()
    if os.path.exists("/dev/nvidia0") or os.environ.get("BERTLIB_KEEP_FREED_MEMORY") == "0":
        pytest.skip("only on CPU-only machines with the default setting")
    previous = np.core.multiarray._set_madvise_hugepage(False)
    assert previous is False


def _cpuinfo(vendor, *flags):
    return f"vendor_id\t: {vendor}\nmodel name\t: some CPU\nflags\t\t: fpu sse sse2 {' '.join(flags)}\n"


def test_openblas_kernels_are_named_from_the_cpu_features():
    """OneFlow's bundled OpenBLAS falls back to SSE3 kernels on CPUs newer than it (measured: 2-4x
    slower sgemm); bertlib names the kernels from the CPU's features instead."""
    from bertlib.runtime import openblas_core_for

    avx512 = ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl")
    assert openblas_core_for(_cpuinfo("GenuineIntel", *avx512)) == "SkylakeX"
    assert openblas_core_for(_cpuinfo("GenuineIntel", "avx2", "fma")) == "Haswell"
    assert openblas_core_for(_cpuinfo("AuthenticAMD", *avx512)) == "Haswell"   # Zen 4: measured Haswell
    assert openblas_core_for(_cpuinfo("AuthenticAMD", "avx2", "fma")) == "Haswell"
    assert openblas_core_for(_cpuinfo("GenuineIntel", "avx")) is None          # no AVX2: OpenBLAS's pick
