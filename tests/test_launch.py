"""The launcher: nothing outlives bert-pretrain whatever kills it, failures name the rank, and the
node rank comes from this machine's addresses (with a clear error when it is none of them)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertlib import launch

ROOT = Path(__file__).resolve().parents[1]
BERT_PRETRAIN = str(Path(sys.executable).with_name("bert-pretrain"))
# tiny model on the default corpus (built once into the cache, seconds) so each job starts fast
TINY = ["--device", "cpu", "--num_hidden_layers", "1", "--num_attention_heads", "2",
        "--hidden_size_per_head", "16", "--batch_size_per_device", "4", "--seq_length", "32",
        "--max_predictions_per_seq", "5", "--loss_print_every_n_iter", "1", "--no_progress"]
SYN_LAUNCH = ("import sys; from bertlib.launch import run_launcher; "
              "sys.exit(run_launcher('tests.helpers.syn_train', sys.argv[1:], nproc_per_node=2))")


MARKER_ENV = "BERTLIB_TEST_JOB"  # set for one job; its processes inherit it, whatever their argv


def processes_with(marker: str) -> dict[int, str]:
    """pid -> command line of every live process of the job marked ``marker`` (a /proc scan of the
    environments: the ranks are not our children, and their command lines name no job)."""
    wanted = f"{MARKER_ENV}={marker}".encode()
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if wanted not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                continue
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if state != "Z":
            found[int(pid)] = cmd
    return found


def marked_env(marker: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != launch.NODE_RANK_ENV}
    env[MARKER_ENV] = marker
    return env


def wait_until_gone(marker: str, seconds: float) -> tuple[dict, float]:
    start = time.monotonic()
    while True:
        left = processes_with(marker)
        if not left or time.monotonic() - start > seconds:
            return left, time.monotonic() - start
        time.sleep(0.1)


def _as_from_a_terminal():
    """Default dispositions for the stop signals, as a command typed in a terminal has them: a test
    run started with nohup or in the background (`cmd &` ignores SIGINT and SIGQUIT) would
    otherwise pass its ignored signals on, and bert-pretrain rightly keeps ignoring them."""
    for sig in (signal.SIGHUP, signal.SIGQUIT, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def start_training(tmp_path, nproc=2):
    """bert-pretrain on ``nproc`` CPU processes, returned once rank 0 has logged two iterations."""
    marker = str(tmp_path)
    err = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen([BERT_PRETRAIN, "--gpu_num_per_node", str(nproc), *TINY, "--iter_num", "100000",
                             "--log_dir", str(tmp_path / "logs")], env=marked_env(marker),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=err, text=True,
                            preexec_fn=_as_from_a_terminal)
    for line in proc.stdout:
        if line.startswith("iter 1,"):
            break
    else:
        proc.wait()
        err.seek(0)
        pytest.fail(f"bert-pretrain ended before training (exit {proc.returncode}):\n{err.read()}")
    return proc, marker, err


@pytest.mark.parametrize("sig,status", [(signal.SIGKILL, -9), (signal.SIGHUP, 129), (signal.SIGQUIT, 131),
                                        (signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGKILL", "SIGHUP", "SIGQUIT", "SIGTERM", "SIGINT"])
def test_every_rank_dies_with_bert_pretrain(tmp_path, sig, status):
    proc, marker, err = start_training(tmp_path)
    try:
        ranks = set(processes_with(marker)) - {proc.pid}
        assert len(ranks) == 2, processes_with(marker)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == status  # 128 + N: what a shell reports for a kill by N
        left, seconds = wait_until_gone(marker, 10)
        assert not left, f"still running {seconds:.1f}s after {sig.name} to bert-pretrain: {left}"
        assert seconds < 3, f"ranks took {seconds:.1f}s to die"
    finally:
        proc.kill()
        proc.wait()
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)
    if sig != signal.SIGKILL:
        err.seek(0)
        assert f"bert-pretrain: {sig.name} received: stopping the ranks" in err.read()


def test_nohup_keeps_the_job_alive_on_hangup(tmp_path):
    """A SIGHUP ignored when bert-pretrain starts (nohup) stays ignored: the user asked to survive it."""
    marker = str(tmp_path)
    code = ("import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
            "from bertlib.launch import run_launcher; "
            "sys.exit(run_launcher('tests.helpers.syn_train', sys.argv[1:], nproc_per_node=2))")
    proc = subprocess.Popen([sys.executable, "-c", code, "--iters", "100000"], cwd=ROOT,
                            env=marked_env(marker),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("iter 1,"):
                break
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert proc.poll() is None and len(processes_with(marker)) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        proc.kill()
        proc.wait()
    assert wait_until_gone(marker, 10)[0] == {}


@pytest.mark.parametrize("kill", [False, True], ids=["exception", "killed"])
def test_a_failure_names_the_rank(tmp_path, kill):
    args = ["--iters", "50", "--fail_rank", "1", "--fail_step", "2", "--out", str(tmp_path / "x.json")]
    proc = subprocess.run([sys.executable, "-c", SYN_LAUNCH, *args, *(["--kill"] if kill else [])],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    prefix = "bertlib.launch: rank 1 (node 0, pid "
    assert last.startswith(prefix), proc.stderr
    if kill:
        assert "was killed by SIGKILL" in last and proc.returncode == 137
    else:
        assert "exited with code 1" in last and proc.returncode == 1
    assert last.endswith("the other ranks of this node were stopped")
    assert "Traceback" not in proc.stderr.split("[rank 1] failed")[0]  # only the rank's own


# --- which node is this -------------------------------------------------------------------------

def _not_here(candidates):
    """Documentation addresses (RFC 5737) no interface of this machine has (some CI hosts do use them)."""
    return [a for a in candidates if not launch._answers_here(launch._sockaddrs(a))][:2]


ELSEWHERE = _not_here(["203.0.113.7", "203.0.113.8", "198.51.100.7", "198.51.100.8"])


def own_address() -> str:
    for entry in launch._interface_addresses():
        address = entry.split()[0]
        if not address.startswith("127."):
            return address
    pytest.skip("this machine has no non-loopback IPv4 address")


@pytest.fixture
def no_override(monkeypatch):
    monkeypatch.delenv(launch.NODE_RANK_ENV, raising=False)


def test_node_rank_is_the_entry_this_machine_answers_to(no_override):
    me = own_address()
    assert launch.node_rank_from_list(f"{ELSEWHERE[0]},{me}", 2) == (1, ELSEWHERE[0])
    assert launch.node_rank_from_list(f"{me},{ELSEWHERE[0]},{ELSEWHERE[1]}", 3) == (0, me)


def test_a_machine_in_none_of_the_entries_is_told_what_to_do(no_override):
    with pytest.raises(launch.NodeListError) as info:
        launch.node_rank_from_list(",".join(ELSEWHERE), 2)
    message = str(info.value)
    assert f"this machine is none of the --node_list hosts ({ELSEWHERE[0]}, {ELSEWHERE[1]})" in message
    assert "its addresses: " in message and "BERTLIB_NODE_RANK=" in message
    with pytest.raises(launch.NodeListError, match="cannot resolve no-such-host.invalid"):
        launch.node_rank_from_list(f"no-such-host.invalid,{ELSEWHERE[0]}", 2)


def test_a_machine_that_answers_to_several_entries_must_say_which(no_override, monkeypatch):
    # as on a machine with net.ipv4.ip_nonlocal_bind=1, where any address binds
    monkeypatch.setattr(launch, "_answers_here", lambda sockaddrs: True)
    with pytest.raises(launch.NodeListError, match="answers to several --node_list entries .*BERTLIB_NODE_RANK="):
        launch.node_rank_from_list(",".join(ELSEWHERE), 2)


def test_the_override_is_checked(monkeypatch):
    monkeypatch.setenv(launch.NODE_RANK_ENV, "1")
    assert launch.node_rank_from_list(",".join(ELSEWHERE), 2) == (1, ELSEWHERE[0])
    for bad in ("2", "-1", "one"):
        monkeypatch.setenv(launch.NODE_RANK_ENV, bad)
        with pytest.raises(launch.NodeListError, match=r"is not an index into --node_list \(0 to 1\)"):
            launch.node_rank_from_list(",".join(ELSEWHERE), 2)


@pytest.mark.parametrize("node_list,message", [
    (None, "--node_num 2 needs --node_list"),
    ("203.0.113.7", "--node_list names 1 hosts but --node_num is 2"),
    ("203.0.113.7,203.0.113.7", "names 203.0.113.7 twice"),
    ("127.0.0.1,203.0.113.7", "127.0.0.1 is a loopback address"),
    ("203.0.113.7,localhost", "localhost is a loopback address"),
])
def test_bad_node_lists_are_refused(no_override, node_list, message):
    with pytest.raises(launch.NodeListError, match=message):
        launch.node_rank_from_list(node_list, 2)


def test_bert_pretrain_says_so_without_a_traceback(tmp_path):
    proc = subprocess.run([BERT_PRETRAIN, "--node_num", "2", "--node_list", ",".join(ELSEWHERE), *TINY,
                           "--iter_num", "1"], cwd=tmp_path, env=marked_env(str(tmp_path)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("bert-pretrain: error: this machine is none of the --node_list hosts"), \
        proc.stderr
    assert "Traceback" not in proc.stderr and "Running bert" not in proc.stdout
