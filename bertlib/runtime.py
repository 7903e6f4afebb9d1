"""Import OneFlow quietly and answer "which device, which rank" questions.

OneFlow 0.9.0 is the newest release with a compiled core, and it is a demanding guest:

* its core links against cuBLAS 11 and cuDNN 8 even on a CPU-only machine. pip installs them as the
  ``nvidia-cublas-cu11`` / ``nvidia-cudnn-cu11`` wheels; inside one venv the core finds them through
  its RPATH, but when they live in another site-packages the plain import fails with
  ``libcudnn_cnn_infer.so.8: cannot open shared object file``. We then preload them by absolute path
  (``RTLD_GLOBAL``) and import again.
* at import it prints ``libibverbs not available`` from C (a printf on fd 2 that ``sys.stderr``
  redirection cannot catch) and glog warnings. We silence fd 2 around the import and replay what was
  written there only if the import fails, so errors are never hidden.
* in a multi-process launch, ranks > 0 that import too early dial rank 0's control server before it
  listens and lose ~10 s; a one second head start for rank 0 avoids it.

Everything in bertlib gets OneFlow through :func:`import_oneflow` (or the module-level ``flow`` of
:mod:`bertlib.model`), never with a bare ``import oneflow`` at the top of a module.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import io
import os
import sys
import tempfile
import time
import warnings

_FLOW = None

# Order matters: cuDNN's libraries depend on cuBLAS's.
_CUDA_LIBS = (
    ("cublas", "libcublasLt.so.11"),
    ("cublas", "libcublas.so.11"),
    ("cudnn", "libcudnn_ops_infer.so.8"),
    ("cudnn", "libcudnn_ops_train.so.8"),
    ("cudnn", "libcudnn_cnn_infer.so.8"),
    ("cudnn", "libcudnn_cnn_train.so.8"),
)


def _preload_cuda_libraries() -> list[str]:
    """Load the nvidia-* wheels' shared libraries from any ``sys.path`` entry; return what was loaded."""
    loaded = []
    for sub, name in _CUDA_LIBS:
        for root in sys.path:
            hits = glob.glob(os.path.join(root or ".", "nvidia", sub, "lib", name))
            if hits:
                ctypes.CDLL(hits[0], mode=ctypes.RTLD_GLOBAL)
                loaded.append(hits[0])
                break
    return loaded


def _import_with_fd2_silenced():
    """``import oneflow`` with its output held back; re-raise with that output if the import fails.

    Native code writes to file descriptor 2, which is sent to a temp file. Python-level output
    (``sys.stderr`` writes, warnings such as tqdm's "IProgress not found" in a notebook, where
    ``sys.stderr`` is the kernel's stream rather than fd 2) is held in memory the same way.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    py_stderr = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(py_stderr):
                warnings.simplefilter("always")
                import oneflow  # noqa: F401  (the import is the point)
            error = None
        except Exception as exc:  # noqa: BLE001 - re-raised below with the captured text
            error = exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        if error is not None:
            sink.seek(0)
            captured = "\n".join(filter(None, [
                sink.read().decode("utf-8", "replace").strip(),
                py_stderr.getvalue().strip(),
                *(f"{w.category.__name__}: {w.message}" for w in caught),
            ]))
            if captured:
                message = f"{error}\n--- OneFlow wrote while importing ---\n{captured}"
                error.args = (message,)
                if isinstance(error, ImportError):
                    error.msg = message  # str(ImportError) prints .msg, not .args
            raise error
    return sys.modules["oneflow"]


def _choose_openblas_kernels():
    """Name the kernels of OneFlow's bundled OpenBLAS from the CPU's features, not its model.

    OneFlow 0.9's CPU matmul is a statically linked OpenBLAS that picks its kernels from the CPU
    model at load time, and falls back to its SSE3 "Prescott" kernels on models newer than it:
    AMD Zen 3/4 (sgemm 17-20 GFLOP/s per core instead of ~90 with ``OPENBLAS_CORETYPE=Haswell``,
    measured on a 2-core AMD EPYC, 2048^3; its own "Zen" kernels gave 76) and recent Intel Xeons
    with AVX-512 (22-35 GFLOP/s per core instead of 45-55 with ``SkylakeX``, measured on a 2-core
    Xeon with AVX-512 FP16). So: Intel with AVX-512 -> SkylakeX; any other x86 CPU with AVX2 + FMA
    -> Haswell; unless the user chose a core type. Must run before OneFlow (and so OpenBLAS) is
    loaded. (bertlib.fast does its eager CPU matmuls with NumPy's newer OpenBLAS, which knows these
    CPUs; this choice still serves graph mode and the smaller matmuls left to OneFlow.)
    """
    if "OPENBLAS_CORETYPE" in os.environ:
        return
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read(1 << 16)
    except OSError:
        return
    core = openblas_core_for(info)
    if core:
        os.environ["OPENBLAS_CORETYPE"] = core


def openblas_core_for(cpuinfo: str) -> str | None:
    """The OpenBLAS core type for a CPU described by ``/proc/cpuinfo`` text (None: leave it)."""
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                      if line.startswith("flags")), []))
    if not {"avx2", "fma"} <= flags:
        return None
    if "GenuineIntel" in cpuinfo and {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "SkylakeX"
    return "Haswell"


def _keep_freed_buffers():
    """On a CPU-only machine, keep freed memory in the process instead of returning it to the OS.

    bertlib.fast computes parts of each layer with NumPy, whose arrays (3-25 MB here) come from
    glibc malloc and, freed, go back to the kernel; every step then faults them in again, and
    NumPy's transparent-huge-page advice makes the kernel compact memory for them. Measured with
    bench/pretrain_throughput.py (BERT-base, 2 processes, micro-batch 16): 5.1 s of system time per
    step without this, 3.1 s with it (throughput equal within the run-to-run noise). Raising
    malloc's trim and mmap thresholds keeps the pages mapped (peak RSS is unchanged; memory is just
    not handed back between steps). Opt out with BERTLIB_KEEP_FREED_MEMORY=0.
    """
    if os.environ.get("BERTLIB_KEEP_FREED_MEMORY", "1") == "0":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)       # glibc's maximum on 64-bit
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):                  # not glibc: nothing to tune
        pass
    try:
        import numpy as np

        np.core.multiarray._set_madvise_hugepage(False)
    except AttributeError:
        pass


def gpu_device_files() -> list[str]:
    """This machine's NVIDIA GPU device files, any index: a container given only GPU 3 has
    /dev/nvidia3 and no /dev/nvidia0."""
    return sorted(glob.glob("/dev/nvidia[0-9]*"))


def gpu_present() -> bool:
    """Whether this machine shows an NVIDIA GPU, answered without importing OneFlow (the settings
    below must be made before it loads): a GPU device file or a GPU under the driver's /proc entry."""
    return bool(gpu_device_files() or glob.glob("/proc/driver/nvidia/gpus/*"))


def apply_host_settings() -> list[str]:
    """Environment settings made before OneFlow loads; return the names of those this call set.

    Always: glog's INFO/WARNING lines hidden (errors still show). On a machine without a GPU only
    (never for a CUDA job: a GPU's ERROR lines matter, and its VM threads should run as OneFlow
    intends), the CPU-only settings: glog's ERROR lines hidden too (without a GPU they are only
    "no CUDA runtime" noise; FATAL still shows), OneFlow's VM worker threads kept from spinning on
    idle cores (10x the system time, same speed), freed buffers kept (:func:`_keep_freed_buffers`)
    and OpenBLAS's kernels chosen on AMD CPUs (:func:`_choose_openblas_kernels`). A variable the
    user set is left alone.
    """
    before = dict(os.environ)
    gpu = gpu_present()
    os.environ.setdefault("GLOG_minloglevel", "2" if gpu else "3")
    if not gpu:
        os.environ.setdefault("ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD", "0")
        _keep_freed_buffers()
        _choose_openblas_kernels()
    return sorted(k for k in os.environ if k not in before)


def import_oneflow():
    """Return the ``oneflow`` module, importing it once, quietly, with the CUDA libraries found.

    Raises ImportError with instructions when OneFlow is missing or is the 0.7.0 stub that pip picks
    on Python >= 3.11.
    """
    global _FLOW
    if _FLOW is not None:
        return _FLOW
    if "oneflow" in sys.modules and hasattr(sys.modules["oneflow"], "Tensor"):
        _FLOW = sys.modules["oneflow"]
        return _FLOW
    apply_host_settings()
    if int(os.environ.get("RANK", "0")) > 0:
        time.sleep(1.0)  # let rank 0 start its control server first (see module docstring)
    try:
        flow = _import_with_fd2_silenced()
    except ModuleNotFoundError as exc:
        if exc.name != "oneflow":
            raise
        raise ImportError(
            "OneFlow is not installed. bertlib needs `oneflow==0.9.0` on Python 3.10 "
            "(see README: `make install` or `pip install -e .`)."
        ) from exc
    except ImportError as exc:  # the core's shared libraries did not load
        if "cannot open shared object file" not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "oneflow" or m.startswith("oneflow.")]:
            del sys.modules[name]
        if not _preload_cuda_libraries():
            raise ImportError(
                f"OneFlow could not load its CUDA libraries ({exc}). Install them with "
                "`pip install nvidia-cublas-cu11==11.10.3.66 nvidia-cudnn-cu11==8.5.0.96` "
                "(they are needed even on machines without a GPU)."
            ) from exc
        flow = _import_with_fd2_silenced()
    if not hasattr(flow, "Tensor"):
        raise ImportError(
            f"The installed oneflow ({getattr(flow, '__version__', '?')}) has no compiled core: this is "
            "the stub pip installs on Python >= 3.11. Use Python 3.10 with oneflow==0.9.0."
        )
    _FLOW = flow
    return flow


# --------------------------------------------------------------------------------------------------
# Ranks and devices. The launcher (oneflow.distributed.launch) sets RANK / WORLD_SIZE / LOCAL_RANK.
# --------------------------------------------------------------------------------------------------

def rank() -> int:
    # OneFlow itself sets RANK=-1 in a single-process run, so ask it once it is imported.
    if _FLOW is not None:
        return _FLOW.env.get_rank()
    return max(0, int(os.environ.get("RANK", "0")))


def world_size() -> int:
    if _FLOW is not None:
        return _FLOW.env.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    if _FLOW is not None:
        return _FLOW.env.get_local_rank()
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def _driver_version() -> str | None:
    try:
        with open("/proc/driver/nvidia/version") as f:
            first = f.readline()
    except OSError:
        return None
    words = [w for w in first.split() if w[:1].isdigit() and "." in w]
    return words[0] if words else None


def cuda_device_count() -> int:
    """How many GPUs OneFlow can use on this machine (0 without a GPU, or with a driver too old)."""
    flow = import_oneflow()
    return flow.cuda.device_count() if flow.cuda.is_available() else 0


def no_gpu_reason() -> str:
    """Why OneFlow sees no usable GPU here, in one sentence for an error message."""
    files = gpu_device_files()
    if not files and not glob.glob("/proc/driver/nvidia/gpus/*"):
        return ("this machine shows no NVIDIA GPU (no /dev/nvidia<N> device file: no GPU, no driver "
                "loaded, or a container started without GPUs)")
    version = _driver_version()
    shown = ", ".join(files) if files else "GPUs under /proc/driver/nvidia"
    return (f"the NVIDIA driver{' ' + version if version else ''} shows {shown}, but OneFlow counts "
            "0 usable GPUs: OneFlow 0.9.0's wheel is built for CUDA 11.7 and needs driver >= 515 "
            "(check `nvidia-smi` and CUDA_VISIBLE_DEVICES)")


def check_launch_devices(device: str, nproc_per_node: int) -> str:
    """Before ``nproc_per_node`` processes start on this machine: the device kind they will use.

    Returns ``"cpu"`` or ``"cuda"``; raises ValueError, saying why, where the processes could not
    have the devices they are asked for: ``--device cuda`` without a usable GPU, ``--device auto``
    with several processes and no usable GPU (several CPU processes are ``--device cpu``, never a
    silent fall back), or more processes than GPUs (local rank r uses GPU r).
    """
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"--device must be one of auto, cuda, cpu (got {device!r})")
    if device == "cpu":
        return "cpu"
    count = cuda_device_count()
    if count == 0:
        if device == "cuda":
            raise ValueError(f"--device cuda: {no_gpu_reason()}")
        if nproc_per_node > 1:
            raise ValueError(
                f"--device auto with --gpu_num_per_node {nproc_per_node}: {no_gpu_reason()}. To run "
                f"{nproc_per_node} processes on the CPU, say so with --device cpu")
        return "cpu"
    if nproc_per_node > count:
        raise ValueError(
            f"--gpu_num_per_node {nproc_per_node}, but OneFlow sees {count} GPU(s) on this machine "
            f"(local rank r uses GPU r): use --gpu_num_per_node {count} or fewer, or check "
            "CUDA_VISIBLE_DEVICES")
    return "cuda"


def wants_cuda(device: str) -> bool:
    """Whether ``device`` (auto | cuda | cpu | cuda:N) will run on a GPU here."""
    if device == "cpu":
        return False
    return device.startswith("cuda") or cuda_device_count() > 0


def resolve_device(device: str = "auto") -> str:
    """Map ``auto``/``cuda``/``cpu`` to a OneFlow device string for this rank (``cuda:<local_rank>``).

    ``cuda`` on a machine without a usable GPU, or a local rank without its GPU, is an error rather
    than a silent fall back to the CPU.
    """
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"--device must be one of auto, cuda, cpu (got {device!r})")
    if device == "cpu":
        return "cpu"
    count = cuda_device_count()
    if device == "auto":
        device = "cuda" if count > 0 else "cpu"
    if device == "cuda":
        if count == 0:
            raise RuntimeError(f"--device cuda was asked for, but OneFlow sees no usable GPU: {no_gpu_reason()}")
        if local_rank() >= count:
            raise RuntimeError(f"local rank {local_rank()} has no GPU: OneFlow sees {count} GPU(s) "
                               "on this machine (local rank r uses GPU r)")
        return f"cuda:{local_rank()}"
    return "cpu"
