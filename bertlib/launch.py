"""Start this node's processes (one per device), supervise them, and make the job end as a whole.

The flags of OneFlow-Benchmark's run_pretraining.py describe the job: ``gpu_num_per_node``
processes on each of ``node_num`` machines listed in ``node_list``. :func:`run_launcher` starts
this node's processes with the environment ``python -m oneflow.distributed.launch`` would give them
(MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK) and watches them. With ``--device cpu``
the same processes run on CPU cores: one process per core is how OneFlow uses more than one core,
since its CPU kernels are single-threaded.

We start the ranks ourselves rather than through OneFlow's launcher because that launcher names a
failed process by PID only (and then raises a traceback of its own), cannot tie its ranks' lives
to the command's, and stops them with ``killpg`` of its own group. What we guarantee instead:

* **One failing rank ends the job.** When a rank raises, the others wait in OneFlow's shutdown
  barriers for ONEFLOW_TIMEOUT_SECONDS (two hours by default). :func:`fail_fast` catches the
  exception in the rank, prints it and leaves with ``os._exit(1)``, which skips the barriers; the
  launcher sees the exit, says which rank it was (number, node, PID, exit code or signal) and stops
  the others.
* **Nothing outlives the command.** Each rank asks the kernel for SIGKILL when the launcher dies
  (``PR_SET_PDEATHSIG``), the one mechanism that also covers ``kill -9`` of the command. SIGTERM,
  SIGINT, SIGHUP and SIGQUIT stop the ranks and exit with 128 + the signal number, as a shell
  reports a process killed by it. Each rank leads its own session, so a terminal's Ctrl-C or
  hang-up reaches only the launcher, which stops the ranks, instead of every rank printing a
  KeyboardInterrupt of its own.
* **A lost node ends the job with its name.** OneFlow notices a peer gone only by aborting our own
  ranks, often without saying which peer (an EPOLLERR in its transport; or, ~10 s later,
  ``Machine <rank> lost`` from its control plane, where a "machine" is a process rank). So the
  launchers of a multi-node job also watch each other (:class:`_NodeWatch`, on ``--master_port``
  + 1): a node whose launcher dies or whose job fails is named on every other node, which stops
  its ranks at once.
* **The node rank comes from this machine's addresses.** It is the index of the one ``node_list``
  entry that an address of this machine's interfaces answers to (found by binding a socket to it).
  The hostname cannot tell: in containers and network namespaces it names the host.
  ``BERTLIB_NODE_RANK`` overrides the search (NAT, or a machine listed under a name it cannot bind).
"""
from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

IN_RANK_ENV = "BERTLIB_IN_LAUNCH"
NODE_RANK_ENV = "BERTLIB_NODE_RANK"
MULTI_NODE_PORT = 29500  # OneFlow-Benchmark's and OneFlow's default: every node must agree without talking
STOP_GRACE_SECONDS = 5.0  # SIGTERM first, SIGKILL after this
_POLL_SECONDS = 0.2


class NodeListError(ValueError):
    """This machine's place in the job cannot be found as asked; the message says what to change."""


def in_launched_rank() -> bool:
    return os.environ.get(IN_RANK_ENV) == "1"


def free_port() -> int:
    """A TCP port nobody listens on now, so two jobs on one machine do not collide on 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- which node is this -------------------------------------------------------------------------

def parse_node_list(node_list: str | None, node_num: int) -> list[str]:
    if not node_list:
        raise NodeListError(f"--node_num {node_num} needs --node_list with {node_num} comma-separated hosts")
    nodes = [n.strip() for n in node_list.split(",") if n.strip()]
    if len(nodes) != node_num:
        raise NodeListError(f"--node_list names {len(nodes)} hosts but --node_num is {node_num}")
    for host in nodes:
        if nodes.count(host) > 1:
            raise NodeListError(f"--node_list names {host} twice; list each machine once")
        if _is_loopback(host):
            # every machine answers to it, so each node would take itself for the master
            raise NodeListError(f"--node_list entry {host} is a loopback address; list each machine by an "
                              "address the other machines can reach")
    return nodes


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to 127.0.1.1 here and still be right on the others


def _sockaddrs(host: str) -> list[tuple]:
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return [(family, addr) for family, _, _, _, addr in infos]


def _answers_here(sockaddrs) -> bool:
    """True if one of the addresses belongs to an interface of this machine (or namespace)."""
    for family, addr in sockaddrs:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind(addr)
            return True
        except OSError:
            continue
    return False


def _interface_addresses() -> list[str]:
    """'address (interface)' for each interface's IPv4 address, for error messages."""
    import fcntl
    import struct

    found = []
    try:
        names = [name for _, name in socket.if_nameindex()]
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return found
    with probe:
        for name in names:
            try:
                reply = fcntl.ioctl(probe.fileno(), 0x8915,  # SIOCGIFADDR
                                    struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on this one
            found.append(f"{socket.inet_ntoa(reply[20:24])} ({name})")
    return found


def node_rank_from_list(node_list: str | None, node_num: int) -> tuple[int, str]:
    """(node_rank of this machine, master address) from the comma-separated ``node_list`` flag."""
    if node_num == 1:
        return 0, "127.0.0.1"
    nodes = parse_node_list(node_list, node_num)
    override = os.environ.get(NODE_RANK_ENV)
    if override is not None:
        try:
            rank = int(override)
        except ValueError:
            rank = -1
        if not 0 <= rank < node_num:
            raise NodeListError(f"{NODE_RANK_ENV}={override!r} is not an index into --node_list "
                              f"(0 to {node_num - 1})")
        return rank, nodes[0]
    resolved = {host: _sockaddrs(host) for host in nodes}
    matches = [i for i, host in enumerate(nodes) if _answers_here(resolved[host])]
    if len(matches) == 1:
        return matches[0], nodes[0]
    hint = f"set {NODE_RANK_ENV}=<its index in --node_list, from 0> to say which entry this machine is"
    if matches:
        raise NodeListError(f"this machine answers to several --node_list entries "
                          f"({', '.join(nodes[i] for i in matches)}); {hint}")
    unresolved = [host for host in nodes if not resolved[host]]
    mine = ", ".join(_interface_addresses()) or "none found"
    message = f"this machine is none of the --node_list hosts ({', '.join(nodes)}); its addresses: {mine}"
    if unresolved:
        message += f"; cannot resolve {', '.join(unresolved)}"
    raise NodeListError(f"{message}. Run on each listed machine, or {hint}")


# --- the ranks ----------------------------------------------------------------------------------

class _Rank:
    def __init__(self, rank: int, node: int, local: int, proc: subprocess.Popen):
        self.rank, self.node, self.local, self.proc = rank, node, local, proc

    def __str__(self):
        return f"rank {self.rank} (node {self.node}, pid {self.proc.pid})"


class _Stop(BaseException):
    """Raised in the launcher's main thread by a stop signal; BaseException so no handler eats it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@contextlib.contextmanager
def _stop_signals():
    """Turn the stop signals into :class:`_Stop` while the job runs; yields a function that makes
    later signals no-ops (stopping has begun: a second Ctrl-C must not cut the clean-up short)."""
    state = {"stopping": False}

    def handler(signum, frame):
        if not state["stopping"]:
            state["stopping"] = True
            raise _Stop(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in _STOP_SIGNALS:
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # e.g. SIGHUP under nohup: the user asked to survive it
            previous[sig] = signal.signal(sig, handler)
    try:
        yield lambda: state.update(stopping=True)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _rank_preexec():
    """A preexec_fn for the ranks: let them receive the stop signals (blocked in the launcher while
    it starts them), and ask the kernel to SIGKILL them when we die, even by SIGKILL.

    The kernel ties that request to the thread that forks, so ranks must be started from a thread
    that lives as long as the job: :func:`run_launcher` starts them and waits for them on one thread.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        prctl = None  # not Linux: the signal handlers are all there is
    parent = os.getpid()
    pr_set_pdeathsig, sigkill = 1, int(signal.SIGKILL)

    def preexec():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        if prctl is not None:
            prctl(pr_set_pdeathsig, sigkill, 0, 0, 0)
            if os.getppid() != parent:  # we died before the request was made: nobody will send it
                os.kill(os.getpid(), sigkill)

    return preexec


def _signal_group(pid: int, sig):
    # Each rank leads its own session, so its group is the rank and anything it started. Linux does
    # not reuse a number while a group of that id exists, so this never reaches a stranger.
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_ranks(ranks: list[_Rank]):
    live = [r for r in ranks if r.proc.poll() is None]
    for r in live:
        _signal_group(r.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for r in live:
        try:
            r.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for r in ranks:
        _signal_group(r.proc.pid, signal.SIGKILL)
        r.proc.wait()


def _listen_on_all(port: int) -> socket.socket:
    """A server on every address of this machine, IPv6 as well where it has it."""
    if socket.has_dualstack_ipv6():
        try:
            return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        except OSError:
            pass  # IPv6 switched off here
    return socket.create_server(("", port))


class _NodeWatch:
    """The launchers of a multi-node job watch each other over one TCP connection per node.

    Node k > 0 connects to node 0's launcher on ``master_port + 1`` and says which node it is. Each
    side says ``done`` when its ranks succeeded or ``failed <why>`` when its job failed; a
    connection that ends without either means that node's launcher died (killed, or its machine
    or the network failed; TCP keepalive finds a silent peer in ~15 s). Node 0 passes what it
    learns on to the other nodes. OneFlow notices a lost peer too, but only as an abort of our own
    ranks that does not always say which peer (an EPOLLERR in its transport, for one), and
    sometimes only after its control plane's next heartbeat.
    """

    def __init__(self, node_rank: int, nodes: list[str], port: int):
        self.node_rank, self.nodes, self.port = node_rank, nodes, port
        self.events: list[tuple[int, str]] = []  # (node, what happened to it), first first
        self.ended = False
        self._peers: dict[int, socket.socket] = {}
        self._send_lock = threading.Lock()
        self._server = None

    def start(self):
        if self.node_rank == 0:
            try:
                self._server = _listen_on_all(self.port)
            except OSError as exc:
                raise NodeListError(f"cannot listen on port {self.port} (--master_port + 1), where node 0 "
                                    f"watches the other nodes: {exc.strerror}") from None
            threading.Thread(target=self._accept, daemon=True).start()
        else:
            threading.Thread(target=self._connect, daemon=True).start()

    def name(self, node: int) -> str:
        return f"node {node} ({self.nodes[node]})"

    def _accept(self):
        while not self.ended:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, None), daemon=True).start()

    def _connect(self):
        while not self.ended:
            try:
                conn = socket.create_connection((self.nodes[0], self.port), timeout=5)
            except OSError:
                time.sleep(1)  # node 0 is not listening yet
                continue
            conn.settimeout(None)
            self._send(conn, f"hello {self.node_rank}")
            self._serve(conn, 0)
            return

    def _serve(self, conn: socket.socket, node: int | None):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 5)):
            if hasattr(socket, option):
                conn.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        if node is not None:
            self._peers[node] = conn
        reader = conn.makefile("r", encoding="utf-8", errors="replace")
        said = False
        try:
            for line in reader:
                word, _, rest = line.rstrip("\n").partition(" ")
                if word == "hello" and node is None:
                    node = int(rest)
                    if not 0 < node < len(self.nodes):
                        break  # not one of ours: some other job on this port
                    self._peers[node] = conn
                elif word == "done" and node is not None:
                    said = True
                elif word == "failed" and node is not None:
                    self._record(node, f"failed: {rest}")
                    said = True
                elif word == "lost":
                    other, _, why = rest.partition(" ")
                    self._record(int(other), why)
        except (OSError, ValueError):
            pass  # a reset or a keepalive timeout: the same as an end without a word
        if node is None or node not in self._peers:
            conn.close()
        elif not said and not self.ended:
            self._record(node, "was lost: its launcher ended without a word (killed, or its machine or "
                               "the network failed)")

    def _record(self, node: int, what: str):
        if any(n == node for n, _ in self.events):
            return
        self.events.append((node, what))
        if self.node_rank == 0:  # pass it on: the other nodes may not see node `node` themselves
            for peer in list(self._peers):
                if peer != node:
                    self._send(self._peers[peer], f"lost {node} {what}")

    def _send(self, conn: socket.socket, line: str):
        with self._send_lock:
            try:
                conn.sendall((line.replace("\n", " ") + "\n").encode())
            except OSError:
                pass

    def tell(self, line: str):
        for conn in list(self._peers.values()):
            self._send(conn, line)

    def close(self, outcome: str):
        """Tell the other nodes how this node ended (``done`` or ``failed <why>``) and hang up."""
        self.ended = True
        for conn in list(self._peers.values()):
            self._send(conn, outcome)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        if self._server is not None:
            self._server.close()


def _first_failure(ranks: list[_Rank], watch: _NodeWatch | None) -> _Rank | None:
    """Wait until every rank succeeded (None), one failed (that rank), or another node ended badly
    (None, with an event in ``watch``)."""
    while True:
        if watch is not None and watch.events:
            # the other node's news can come before we see our own rank's death, which may be what
            # it reacted to: look at our ranks for a moment before blaming the other node
            return _own_cause(ranks)
        running = False
        for r in ranks:
            code = r.proc.poll()
            if code is None:
                running = True
            elif code != 0:
                return _root_cause(ranks, r)
        if not running:
            return None
        time.sleep(_POLL_SECONDS)


# When one rank fails, OneFlow aborts the others (SIGABRT, "Check failed" in its IO poller) within
# moments, and the abort can be seen first: wait this long, then name the rank that caused it.
_SETTLE_SECONDS = 1.0


def _root_cause(ranks: list[_Rank], first: _Rank) -> _Rank:
    """The failed rank to name: one that did not die of SIGABRT if there is one, else ``first``."""
    deadline = time.monotonic() + _SETTLE_SECONDS
    while time.monotonic() < deadline and any(r.proc.poll() is None for r in ranks):
        time.sleep(_POLL_SECONDS)
    causes = [r for r in ranks if _failed_by_itself(r)]
    return causes[0] if causes else first


def _failed_by_itself(rank: _Rank) -> bool:
    """Ended with an error other than OneFlow's SIGABRT after a peer was lost."""
    return rank.proc.poll() not in (None, 0, -signal.SIGABRT)


def _own_cause(ranks: list[_Rank]) -> _Rank | None:
    """A rank of this node that failed by itself (not OneFlow's SIGABRT after a peer was lost),
    seen within the settle time; None if there is none."""
    deadline = time.monotonic() + _SETTLE_SECONDS
    while True:
        causes = [r for r in ranks if _failed_by_itself(r)]
        if causes or time.monotonic() >= deadline:
            return causes[0] if causes else None
        time.sleep(_POLL_SECONDS)


def _exit_status(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it


def _failure_message(failed: _Rank, lost: list[int], nproc_per_node: int, nodes: list[str] | None,
                     short: bool = False) -> str:
    code = failed.proc.returncode
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        what = f"{failed} was killed by {name}"
        if -code == signal.SIGKILL and not short:
            what += " (sent by someone, or by the kernel when memory ran out)"
    else:
        what = f"{failed} exited with code {code}"
    for peer in lost[:1]:
        node = peer // nproc_per_node
        host = f", {nodes[node]}" if nodes and node < len(nodes) else ""
        what += (f": OneFlow lost contact with rank {peer} (node {node}{host}), "
                 "whose process stopped or cannot be reached")
    return what


def _say(prog: str, message: str):
    try:
        print(f"{prog}: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # the terminal is gone (SIGHUP): nobody to tell


def _prog() -> str:
    """The command's name for messages (bert-pretrain), or this module's when run from Python."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not name or name == "-c" or name.endswith(".py"):
        return __name__
    return name


def run_launcher(module: str, argv: list[str], nproc_per_node: int, node_num: int = 1,
                 node_list: str | None = None, master_port: int | None = None,
                 extra_env: dict | None = None, relay_stdout: bool = False) -> int:
    """Run ``python -m module *argv`` in ``nproc_per_node`` processes on this node; return the exit code.

    The ranks inherit this process's stdout, or with ``relay_stdout`` write it through this
    process's ``sys.stdout`` (a notebook shows only what goes through there). Returns 0 only if
    every rank succeeded; 2 if the job cannot start (the reason is printed, no traceback); the failed
    rank's exit status; 1 when another node of the job ended first; or 128 + N after signal N
    stopped the job.
    """
    prog = _prog()
    try:
        node_rank, master_addr = node_rank_from_list(node_list, node_num)
        nodes = parse_node_list(node_list, node_num) if node_num > 1 else None
    except NodeListError as exc:
        _say(prog, f"error: {exc}")
        return 2
    if master_port is None:
        master_port = free_port() if node_num == 1 else MULTI_NODE_PORT
    env = dict(os.environ)
    env.update(extra_env or {})
    env[IN_RANK_ENV] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")  # one process per core already uses them all
    env.setdefault("GLOG_minloglevel", "2")
    if sys.stderr.isatty():
        env["BERTLIB_STDERR_IS_TTY"] = "1"  # rank 0 may draw a progress bar through the relay
    env.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port),
               WORLD_SIZE=str(nproc_per_node * node_num))
    cmd = [sys.executable, "-u", "-m", module, *argv]
    watch = _NodeWatch(node_rank, nodes, master_port + 1) if nodes else None
    ranks: list[_Rank] = []
    lost: list[int] = []
    err_read, err_write = os.pipe()
    out_read, out_write = os.pipe() if relay_stdout else (None, None)
    relays = [threading.Thread(target=_relay_stderr, args=(err_read, lost), daemon=True)]
    if relay_stdout:
        relays.append(threading.Thread(target=_relay_stdout, args=(out_read,), daemon=True))
    try:
        failed, stopped_by = _run_ranks(prog, cmd, env, node_rank, nproc_per_node, ranks, relays,
                                        err_write, out_write, watch, lost, nodes)
    except NodeListError as exc:  # node 0 cannot watch the others
        _say(prog, f"error: {exc}")
        return 2
    except BaseException:
        if watch is not None:
            watch.close("failed its launcher crashed")
        raise
    message = None
    if stopped_by is not None:
        outcome, code = f"failed stopped by {signal.Signals(stopped_by).name}", 128 + stopped_by
    elif watch is not None and watch.events and (failed is None or failed.proc.returncode == -signal.SIGABRT):
        # another node ended first; an abort of ours is OneFlow's reaction to that, not the cause
        node, what = watch.events[0]
        message = f"{watch.name(node)} {what}; this node's ranks were stopped"
        if failed is not None:
            message += f" ({_failure_message(failed, lost, nproc_per_node, nodes, short=True)})"
        outcome, code = f"failed stopped after {watch.name(node)} {what}", 1
    elif failed is not None:
        message = _failure_message(failed, lost, nproc_per_node, nodes)
        outcome, code = f"failed {message}", _exit_status(failed.proc.returncode)
        message += "; the other ranks of this node were stopped"
    else:
        outcome, code = "done", 0
    if watch is not None:
        watch.close(outcome)
    if message:
        _say(prog, message)
    return code


def _run_ranks(prog, cmd, env, node_rank, nproc_per_node, ranks, relays, err_write, out_write, watch,
               lost, nodes):
    """Start the ranks and wait: (the first failed rank or None, the stop signal's number or None).
    Every rank is gone when this returns, whatever happened."""
    failed = stopped_by = None
    with _stop_signals() as stopping:
        try:
            # A stop signal handled between a fork and the rank's entry in `ranks` would leave that
            # rank unseen by the clean-up: hold the signals until every rank is listed. The threads
            # started here inherit the mask and keep it, so the signals wait for the main thread.
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            try:
                for relay in relays:
                    relay.start()
                if watch is not None:
                    watch.start()
                preexec = _rank_preexec()
                for local in range(nproc_per_node):
                    rank = node_rank * nproc_per_node + local
                    proc = subprocess.Popen(cmd, env=dict(env, RANK=str(rank), LOCAL_RANK=str(local)),
                                            stdin=subprocess.DEVNULL, stdout=out_write, stderr=err_write,
                                            start_new_session=True, preexec_fn=preexec)
                    ranks.append(_Rank(rank, node_rank, local, proc))
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            failed = _first_failure(ranks, watch)
            if failed is not None and watch is not None:
                # the other nodes hear it now, not after the clean-up below
                watch.tell(f"failed {_failure_message(failed, lost, nproc_per_node, nodes, short=True)}")
                if failed.proc.returncode == -signal.SIGABRT:
                    # OneFlow aborts a rank when a peer is gone: if that is what happened, the
                    # peer's launcher has a better story, and it is usually on its way
                    deadline = time.monotonic() + 2
                    while not watch.events and time.monotonic() < deadline:
                        time.sleep(0.1)
        except _Stop as stop:
            stopped_by = stop.signum
            stopping()
            name = signal.Signals(stop.signum).name
            if watch is not None:
                watch.tell(f"failed stopped by {name}")
            _say(prog, f"{name} received: stopping the ranks")
        finally:
            stopping()
            _stop_ranks(ranks)
            for fd in (err_write, out_write):
                if fd is not None:
                    os.close(fd)  # the relays end once the ranks' copies are closed too
            for relay in relays:
                relay.join(timeout=5)
    return failed, stopped_by


# printf'd by OneFlow's C++ core at import in every rank; says nothing useful
_NOISE = (b"libibverbs not available, ibv_fork_init skipped\n",)
# glog's FATAL line when OneFlow's control plane cannot reach another process any more
_LOST = re.compile(rb"Machine (\d+) lost")


def _relay_stderr(fd: int, lost: list):
    """Copy the ranks' stderr to ours as it comes (progress bars included), minus import noise;
    note in ``lost`` the ranks OneFlow reports lost."""
    out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
    seen = b""
    with open(fd, "rb", buffering=0, closefd=True) as pipe:
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            for noise in _NOISE:
                chunk = chunk.replace(noise, b"")
            seen = seen[-64:] + chunk  # a message may straddle two reads
            for peer in _LOST.findall(seen):
                if int(peer) not in lost:
                    lost.append(int(peer))
            try:
                if out is not None:
                    out.write(chunk)
                    out.flush()
                else:
                    sys.stderr.write(chunk.decode("utf-8", "replace"))
            except (OSError, ValueError):
                pass  # our stderr is gone; keep draining so no rank blocks on a full pipe


def _relay_stdout(fd: int):
    with open(fd, "rb", closefd=True) as pipe:
        for line in iter(pipe.readline, b""):
            try:
                sys.stdout.write(line.decode("utf-8", "replace"))
                sys.stdout.flush()
            except (OSError, ValueError):
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
