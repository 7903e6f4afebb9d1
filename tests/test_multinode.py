"""Two nodes for real: each in its own network namespace, joined by a veth pair.

Two launchers on one network stack (both nodes at 127.0.0.1) abort in OneFlow's control plane, so
each node gets a namespace of its own, as two machines would. The namespaces, the link and the
addresses are made here and exist only for this test: traffic never leaves the pair. Skipped only
where namespaces cannot be created (not root, no ``ip``).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bertlib import launch

BERT_PRETRAIN = str(Path(sys.executable).with_name("bert-pretrain"))
TINY = ["--device", "cpu", "--num_hidden_layers", "1", "--num_attention_heads", "2",
        "--hidden_size_per_head", "16", "--batch_size_per_device", "4", "--seq_length", "32",
        "--max_predictions_per_seq", "5", "--loss_print_every_n_iter", "1", "--no_progress"]
PREFIX = "bertlib-test-"  # bertlib-test-<pid>-<0|1>: a crashed run's pair is found and removed
MARKER_ENV = "BERTLIB_TEST_JOB"


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _remove_stale_pairs():
    for line in ip("netns", "list", check=False).stdout.splitlines():
        match = re.match(rf"{PREFIX}(\d+)-[01]\b", line)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            ip("netns", "del", line.split()[0], check=False)


class Pair:
    """Two network namespaces joined by a veth pair, one address each in a /24 of their own."""

    def __init__(self):
        pid = os.getpid()
        self.names = [f"{PREFIX}{pid}-{i}" for i in (0, 1)]
        self.links = [f"blt{pid % 10 ** 8}{'ab'[i]}" for i in (0, 1)]  # <= 15 characters
        subnet = f"10.199.{pid % 250 + 1}"
        self.addresses = [f"{subnet}.1", f"{subnet}.2"]

    def create(self):
        for name in self.names:
            ip("netns", "add", name)
        ip("link", "add", self.links[0], "type", "veth", "peer", "name", self.links[1])
        for name, link, address in zip(self.names, self.links, self.addresses):
            ip("link", "set", link, "netns", name)
            ip("-n", name, "addr", "add", f"{address}/24", "dev", link)
            ip("-n", name, "link", "set", link, "up")
            ip("-n", name, "link", "set", "lo", "up")  # OneFlow's ranks on one node talk over it

    def remove(self):
        ip("link", "del", self.links[0], check=False)  # only if it never moved into a namespace
        for name in self.names:
            ip("netns", "del", name, check=False)  # takes its end of the veth pair with it


@pytest.fixture(scope="module")
def pair():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("network namespaces need `ip` (iproute2)")
    _remove_stale_pairs()
    made = Pair()
    try:
        made.create()
    except subprocess.CalledProcessError as exc:
        made.remove()
        pytest.skip(f"cannot create network namespaces here: {' '.join(exc.cmd)}: {exc.stderr.strip()}")
    try:
        yield made
    finally:
        made.remove()


class Node:
    """``bert-pretrain`` started in one namespace, its stdout collected as it comes."""

    def __init__(self, pair, index, args, tmp_path):
        self.index = index
        self.marker = f"{tmp_path}/node{index}"
        env = {k: v for k, v in os.environ.items() if k != launch.NODE_RANK_ENV}
        env[MARKER_ENV] = self.marker
        self.err = open(tmp_path / f"node{index}.stderr", "w+")
        self.lines = []
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", pair.names[index], BERT_PRETRAIN, "--node_num", "2",
             "--node_list", ",".join(pair.addresses), "--gpu_num_per_node", "1", *args,
             "--log_dir", str(tmp_path / f"logs{index}")],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, prefix, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any(line.startswith(prefix) for line in self.lines):
                return
            time.sleep(0.2)
        pytest.fail(f"node {self.index} never printed {prefix!r}:\n{''.join(self.lines)}\n{self.stderr()}")

    def stderr(self):
        self.err.seek(0)
        return self.err.read()

    def processes(self):
        """This node's live processes (the command and its ranks), found by the marker they inherit."""
        wanted = f"{MARKER_ENV}={self.marker}".encode()
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if wanted in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") and \
                        Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(pid))
            except (OSError, IndexError):
                continue
        return found

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        for pid in self.processes():
            os.kill(pid, signal.SIGKILL)


def losses(log_dir):
    return [(r["iter"], r["total_loss"], r["mlm_loss"], r["nsp_loss"])
            for r in map(json.loads, (log_dir / "metrics.jsonl").read_text().splitlines())]


def test_two_nodes_train_as_one_node_with_two_processes(pair, tmp_path):
    run = [*TINY, "--iter_num", "4"]
    single = subprocess.run([BERT_PRETRAIN, "--gpu_num_per_node", "2", *run, "--log_dir", str(tmp_path / "one")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert single.returncode == 0, single.stderr
    nodes = [Node(pair, i, run, tmp_path) for i in (0, 1)]
    try:
        for node in nodes:
            assert node.proc.wait(timeout=180) == 0, node.stderr()
    finally:
        for node in nodes:
            node.kill()
    for node in nodes:
        node.reader.join(timeout=5)
    assert "Running bert: num_gpu_per_node = 1, num_nodes = 2.\n" in nodes[0].lines
    expected = losses(tmp_path / "one")
    assert [r[0] for r in expected] == [0, 1, 2, 3]
    assert losses(tmp_path / "logs0") == expected


@pytest.mark.parametrize("killed,whole", [(1, True), (0, True), (1, False)],
                         ids=["worker-node-killed", "master-node-killed", "worker-rank-killed"])
def test_killing_one_node_ends_the_other_with_its_name(pair, tmp_path, killed, whole):
    """A node killed whole (its bert-pretrain, whose rank dies with it) is named as lost; a rank
    killed on its own is named by its node's launcher, and the other node passes that on."""
    nodes = [Node(pair, i, [*TINY, "--iter_num", "100000"], tmp_path) for i in (0, 1)]
    survivor = nodes[1 - killed]
    try:
        nodes[0].wait_for("iter 1,", 120)
        victims = nodes[killed].processes()
        assert len(victims) == 2  # the command and its rank
        rank_pid = next(pid for pid in victims if pid != nodes[killed].proc.pid)
        os.kill(nodes[killed].proc.pid if whole else rank_pid, signal.SIGKILL)
        start = time.monotonic()
        code = survivor.proc.wait(timeout=60)
        seconds = time.monotonic() - start
        if not whole:
            assert nodes[killed].proc.wait(timeout=30) == 137
        assert nodes[killed].processes() == []
    finally:
        for node in nodes:
            node.kill()
    err = survivor.stderr()
    assert code == 1
    name = f"node {killed} ({pair.addresses[killed]})"
    if whole:
        assert f"bert-pretrain: {name} was lost: its launcher ended without a word" in err, err
    else:
        assert (f"bert-pretrain: {name} failed: rank {killed} (node {killed}, pid {rank_pid}) was killed by "
                "SIGKILL" in err), err
        assert f"rank {killed} (node {killed}, pid {rank_pid}) was killed by SIGKILL" in nodes[killed].stderr()
    # its last word; when its own rank was aborted first (OneFlow's reaction to the lost peer),
    # that abort follows in parentheses
    assert "this node's ranks were stopped" in err.rstrip().splitlines()[-1], err
    assert survivor.processes() == []
    print(f"survivor ended {seconds:.1f}s after the kill")
