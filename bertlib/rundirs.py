"""The directories a run writes to, claimed before it starts.

A run's save/output directory is checked and claimed by the launching process (before any rank
starts, so a mistake costs seconds, not the hours until the first save):

* usable: a directory (made if missing), writable, with room for one checkpoint;
* not in use: an exclusive ``fcntl`` lock on ``<dir>/.bertlib.lock``, held by the live run's
  launching process for its whole life and removed when it ends. The kernel drops the lock when
  that process ends however it ends (even ``kill -9``: the file stays, the lock does not), so a
  crashed run never blocks the next one;
* not a finished run's: a directory holding an earlier run's checkpoints or results is refused
  unless the caller opts in (``--overwrite_output_dir``) or resumes from it;
* free of debris: ``.step_N.tmp`` / ``.step_N.old`` left by a crash are removed (under the lock,
  so never another live run's).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

LOCK_NAME = ".bertlib.lock"


class RunDirError(ValueError):
    """A directory a run cannot use; the message names the flag, the path and the way out."""


def check_writable(path, flag: str, need_bytes: int = 0) -> Path:
    """Make ``path`` if missing; raise RunDirError unless it is a writable directory with room."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{flag} {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"{flag} {path} cannot be created: {exc.strerror or exc}") from None
    probe = path / f".bertlib-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"{flag} {path} is not writable: {exc.strerror or exc}") from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise RunDirError(f"{flag} {path} has {free / 2**20:.0f} MB free; one checkpoint of this model "
                          f"needs about {need_bytes / 2**20:.0f} MB")
    return path


_HELD: dict[Path, "DirLock"] = {}


class DirLock:
    """An exclusive lock on one directory (see the module docstring); release() or process exit ends it.

    Re-entrant within a process (one lock per directory, counted): a task's prepare() claims its
    directories and its run() or launch() claims them again, then releases.
    """

    def __new__(cls, path, flag: str):
        held = _HELD.get(Path(path).resolve())
        if held is not None:
            held._count += 1
            return held
        return super().__new__(cls)

    def __init__(self, path, flag: str):
        import fcntl

        if getattr(self, "_count", 0):
            return
        self.path = Path(path)
        while True:
            self._file = open(self.path / LOCK_NAME, "a+")
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._file.seek(0)
                holder = self._file.read().strip() or "unknown"
                self._file.close()
                raise RunDirError(f"{flag} {self.path} is in use by a live run (pid {holder}); wait for "
                                  "it to end or choose another directory") from None
            try:
                if os.stat(self.path / LOCK_NAME).st_ino == os.fstat(self._file.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            # the holder released (and removed) this file between our open and our lock: again
            self._file.close()
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()
        self._count = 1
        _HELD[self.path.resolve()] = self

    def release(self):
        self._count -= 1
        if self._count <= 0 and not self._file.closed:
            _HELD.pop(self.path.resolve(), None)
            # removed while still held, so a claim that opened it meanwhile sees it gone and retries
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            self._file.close()


def clean_debris(path) -> list[str]:
    """Remove what a crash mid-save left (``.step_N.tmp``, ``.step_N.old``, ``.latest.tmp``)."""
    import re

    debris = re.compile(r"^\.step_\d+\.(tmp|old|deleting)$|^\.latest\.tmp$")
    removed = []
    for entry in Path(path).iterdir():
        if debris.match(entry.name):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            removed.append(entry.name)
    return removed


def _inside(path, parent: Path) -> bool:
    try:
        Path(path).resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def claim_save_dir(path, flag: str = "--model_save_dir", *, resume_from=None, overwrite: bool = False,
                   need_bytes: int = 0) -> DirLock:
    """Check and lock a checkpoint directory; refuse one holding another run's checkpoints.

    Resuming from a checkpoint inside ``path`` continues that run there. Otherwise its ``step_N``
    and ``latest`` belong to a finished (or crashed) run: refused, or deleted with ``overwrite``.
    """
    from .checkpoint import step_dirs

    path = check_writable(path, flag, need_bytes)
    lock = DirLock(path, flag)
    try:
        earlier = [p.name for p in step_dirs(path)] + (["latest"] if (path / "latest").exists() else [])
        if earlier and not (resume_from and _inside(resume_from, path)):
            if not overwrite:
                shown = ", ".join(earlier[:3]) + (", ..." if len(earlier) > 3 else "")
                raise RunDirError(
                    f"{flag} {path} holds an earlier run's checkpoints ({shown}): resume it with "
                    f"--model_load_dir {path}, pass --overwrite_output_dir to start afresh (deleting "
                    "them), or choose another directory")
            for name in earlier:
                target = path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        clean_debris(path)
    except BaseException:
        lock.release()
        raise
    return lock


def claim_dirs(save_dir=None, *, resume_from=None, overwrite: bool = False, need_bytes: int = 0,
               other_dirs: tuple = ()) -> list[DirLock]:
    """Claim a checkpoint directory (:func:`claim_save_dir`) and plain ones (``(path, flag)``:
    checked and locked); a directory named twice is claimed once."""
    locks, seen = [], set()
    try:
        if save_dir:
            locks.append(claim_save_dir(save_dir, resume_from=resume_from, overwrite=overwrite,
                                        need_bytes=need_bytes))
            seen.add(Path(save_dir).resolve())
        for path, flag in other_dirs:
            if path and Path(path).resolve() not in seen:
                locks.append(DirLock(check_writable(path, flag), flag))
                seen.add(Path(path).resolve())
    except BaseException:
        release(locks)
        raise
    return locks


def release(locks):
    for lock in locks:
        lock.release()


def release_dirs(*paths):
    """End this process's claims on ``paths`` (however many times each was claimed)."""
    for path in paths:
        lock = _HELD.get(Path(path).resolve()) if path else None
        if lock is not None:
            lock._count = 1
            lock.release()


def claim_output_dir(path, flag: str, finished_marks: tuple, overwrite: bool = False) -> DirLock:
    """Check and lock an output directory; refuse one holding a finished run's ``finished_marks``
    unless ``overwrite`` (its files are then replaced as the new run writes them)."""
    path = check_writable(path, flag)
    lock = DirLock(path, flag)
    found = [m for m in finished_marks if (path / m).exists()]
    if found and not overwrite:
        lock.release()
        raise RunDirError(f"{flag} {path} holds a finished run's results ({', '.join(found)}): pass "
                          "--overwrite_output_dir to replace them, or choose another directory")
    return lock


def checkpoint_bytes(config) -> int:
    """About the size of one checkpoint of ``config``'s model: weights, two Adam moments, and the
    tied decoder copy that the Hugging Face format stores (float32)."""
    h, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    embeddings = (vocab + config.max_position_embeddings + config.type_vocab_size) * h
    layers = config.num_hidden_layers * (4 * h * h + 2 * h * inter + 10 * h + inter)
    params = embeddings + layers + 2 * h * h + vocab
    return 4 * (3 * params + vocab * h) + (1 << 20)
