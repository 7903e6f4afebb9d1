"""Start one process per device through OneFlow's launcher, and make any failure end the whole job.

The seed's flags describe the job: ``gpu_num_per_node`` processes on each of ``node_num`` machines
listed in ``node_list``. We translate them for ``python -m oneflow.distributed.launch`` (nproc_per_node,
nnodes, node_rank, master_addr, master_port), which sets RANK / WORLD_SIZE / LOCAL_RANK for each
process. With ``--device cpu`` the same processes run on CPU cores: one process per core is how
OneFlow uses more than one core, since its CPU kernels are single-threaded.

Two OneFlow behaviours make failure handling our job:

* when one rank raises, the others wait in OneFlow's shutdown barriers for ONEFLOW_TIMEOUT_SECONDS
  (two hours by default). :func:`fail_fast` catches the exception in the rank, prints it and leaves
  with ``os._exit(1)``, which skips the barriers; the launcher sees the non-zero exit and kills the
  other ranks.
* the launcher kills ranks with ``os.killpg(its own pid)``, which only reaches them if it leads a
  process group. :func:`run_launcher` starts it in a new session so that it does, and kills that
  whole group itself when the launcher is gone, so no orphan rank survives.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import traceback

IN_RANK_ENV = "BERTLIB_IN_LAUNCH"


def in_launched_rank() -> bool:
    return os.environ.get(IN_RANK_ENV) == "1"


def free_port() -> int:
    """A TCP port nobody listens on now, so two jobs on one machine do not collide on 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_addresses() -> set[str]:
    names = {"localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn()}
    try:
        names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        pass
    return names


def node_rank_from_list(node_list: str | None, node_num: int) -> tuple[int, str]:
    """(node_rank of this machine, master address) from the seed's comma-separated ``node_list``."""
    if node_num == 1:
        return 0, "127.0.0.1"
    if not node_list:
        raise ValueError(f"--node_num {node_num} needs --node_list with {node_num} comma-separated hosts")
    nodes = [n.strip() for n in node_list.split(",") if n.strip()]
    if len(nodes) != node_num:
        raise ValueError(f"--node_list names {len(nodes)} hosts but --node_num is {node_num}")
    env_rank = os.environ.get("BERTLIB_NODE_RANK")
    if env_rank is not None:
        return int(env_rank), nodes[0]
    local = _local_addresses()
    matches = [i for i, n in enumerate(nodes) if n in local]
    if len(matches) != 1:
        raise ValueError(
            f"cannot tell which entry of --node_list ({node_list}) is this machine ({socket.gethostname()}); "
            "set BERTLIB_NODE_RANK=<index> on each machine"
        )
    return matches[0], nodes[0]


def run_launcher(module: str, argv: list[str], nproc_per_node: int, node_num: int = 1,
                 node_list: str | None = None, master_port: int | None = None,
                 extra_env: dict | None = None, relay_stdout: bool = False) -> int:
    """Run ``python -m module *argv`` in ``nproc_per_node`` processes on this node; return the exit code.

    The ranks inherit this process's stdout, or with ``relay_stdout`` write it through this
    process's ``sys.stdout`` (a notebook shows only what goes through there). Returns 0 only if
    every rank succeeded.
    """
    node_rank, master_addr = node_rank_from_list(node_list, node_num)
    if master_port is None:
        master_port = free_port() if node_num == 1 else 29500
    env = dict(os.environ)
    env.update(extra_env or {})
    env[IN_RANK_ENV] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")  # also silences the launcher's banner about it
    cmd = [sys.executable, "-m", "oneflow.distributed.launch",
           "--nproc_per_node", str(nproc_per_node), "--nnodes", str(node_num),
           "--node_rank", str(node_rank), "--master_addr", master_addr,
           "--master_port", str(master_port), "-m", module, *argv]
    env.setdefault("GLOG_minloglevel", "2")  # the launcher imports oneflow too: keep glog quiet
    if sys.stderr.isatty():
        env["BERTLIB_STDERR_IS_TTY"] = "1"  # rank 0 may draw a progress bar through the filter
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE if relay_stdout else None)
    relays = [threading.Thread(target=_relay_stderr, args=(proc.stderr,), daemon=True)]
    if relay_stdout:
        relays.append(threading.Thread(target=_relay_stdout, args=(proc.stdout,), daemon=True))
    for relay in relays:
        relay.start()
    # the ranks live in their own session, so a SIGTERM sent to us (a scheduler, `kill`) must be
    # passed on by hand; SIGINT from a terminal is turned into KeyboardInterrupt by Python
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = proc.wait()
        for relay in relays:
            relay.join(timeout=5)
        return code
    except KeyboardInterrupt:
        _kill_group(proc.pid, signal.SIGTERM)
        proc.wait()
        return 130
    finally:
        _kill_group(proc.pid, signal.SIGKILL)  # whatever is left of the job: nothing may outlive it
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# printf'd by OneFlow's C++ core at import in the launcher and in every rank; says nothing useful
_NOISE = (b"libibverbs not available, ibv_fork_init skipped\n",)


def _relay_stderr(pipe):
    """Copy the ranks' stderr to ours as it comes (progress bars included), minus import noise."""
    out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
    while True:
        chunk = os.read(pipe.fileno(), 65536)
        if not chunk:
            break
        for noise in _NOISE:
            chunk = chunk.replace(noise, b"")
        if out is not None:
            out.write(chunk)
            out.flush()
        else:
            sys.stderr.write(chunk.decode("utf-8", "replace"))


def _relay_stdout(pipe):
    for line in iter(pipe.readline, b""):
        sys.stdout.write(line.decode("utf-8", "replace"))
        sys.stdout.flush()


def _kill_group(pgid: int, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def fail_fast(fn, *args, **kwargs):
    """Run ``fn`` in a rank; on any exception print it (tagged with the rank) and exit at once.

    ``os._exit`` skips OneFlow's shutdown barriers, which would otherwise hold every rank for hours.
    """
    from . import runtime

    try:
        result = fn(*args, **kwargs)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if code == 0:
            return None
        if exc.code not in (None, 0) and not isinstance(exc.code, int):
            print(f"[rank {runtime.rank()}] {exc.code}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)
    except BaseException:  # noqa: BLE001 - every failure must end the job
        sys.stdout.flush()
        print(f"[rank {runtime.rank()}] failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    return result


def run_module(module: str, args: list[str], echo: bool = True, cwd=None) -> str:
    """Run ``python -m module *args`` in a fresh process (as a notebook must, to start several ranks),
    echoing its output line by line; return the output, or raise with it if the command failed."""
    cmd = [sys.executable, "-m", module, *map(str, args)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=cwd)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if echo:
            print(line, end="", flush=True)
    if proc.wait() != 0:
        tail = "".join(lines[-20:])
        raise RuntimeError(f"`python -m {module} {' '.join(map(str, args))}` exited with "
                           f"{proc.returncode}:\n{tail}")
    return "".join(lines)
