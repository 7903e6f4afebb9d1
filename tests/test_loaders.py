"""OneFlow loaders: batches equal the records, dtypes/shapes, validation before reading, rank sharding."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertlib.loaders import (PretrainingLoader, SquadLoader, count_parts,
                             iter_numpy_batches)
from bertlib.ofrecord import DataError, write_shards
from bertlib.pretraining_data import pretraining_schema
from bertlib.runtime import import_oneflow

ROOT = Path(__file__).resolve().parents[1]
SEQ, PRED = 32, 5


def fake_instance(i: int, vocab_size: int = 50) -> dict:
    """A structurally valid pre-training record whose first token id encodes ``i``."""
    rng = np.random.default_rng(i)
    length = int(rng.integers(8, SEQ + 1))
    ids = np.zeros(SEQ, np.int32)
    ids[:length] = rng.integers(5, vocab_size, length)
    ids[1] = i % vocab_size
    mask = (np.arange(SEQ) < length).astype(np.int32)
    seg = ((np.arange(SEQ) >= length // 2) & (mask == 1)).astype(np.int32)
    pos = np.zeros(PRED, np.int32)
    pos[:3] = [2, 3, 4]
    mids = np.zeros(PRED, np.int32)
    mids[:3] = rng.integers(5, vocab_size, 3)
    w = np.zeros(PRED, np.float32)
    w[:3] = 1
    return {"input_ids": ids, "input_mask": mask, "segment_ids": seg, "masked_lm_positions": pos,
            "masked_lm_ids": mids, "masked_lm_weights": w, "next_sentence_labels": np.array([i % 2], np.int32)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pretrain")
    write_shards([fake_instance(i) for i in range(40)], d, 4)
    return d


def test_batches_equal_the_records_in_order(data_dir):
    loader = PretrainingLoader(data_dir, batch_size=8, seq_length=SEQ, max_predictions_per_seq=PRED,
                               shuffle=False, vocab_size=50)
    assert count_parts(data_dir) == 4 and loader.data_part_num == 4
    assert loader.num_records == 40 and loader.steps_per_epoch == 5
    expected = next(iter_numpy_batches(data_dir, 8, pretraining_schema(SEQ, PRED)))
    batch = loader.next_batch()
    flow = import_oneflow()
    for name, values in expected.items():
        t = batch[name]
        assert tuple(t.shape) == values.shape, name
        assert t.dtype == (flow.float32 if name == "masked_lm_weights" else flow.int64), name
        np.testing.assert_array_equal(t.numpy(), values)
    assert loader.epoch == pytest.approx(0.2)
    # The reader cycles: 5 batches later it is back at the start.
    for _ in loader.batches(4):
        pass
    np.testing.assert_array_equal(loader.next_batch()["input_ids"].numpy(), expected["input_ids"])


def test_shuffled_batches_are_a_permutation(data_dir):
    loader = PretrainingLoader(data_dir, batch_size=10, seq_length=SEQ, max_predictions_per_seq=PRED,
                               shuffle=True, seed=3, shuffle_buffer_size=64)
    firsts = np.concatenate([b["input_ids"].numpy()[:, 1] for b in loader.batches(4)])
    assert sorted(firsts.tolist()) != firsts.tolist()  # shuffled ...
    assert len(set(firsts.tolist())) >= 30            # ... mostly distinct within one epoch's worth


def test_bad_data_is_a_python_error_not_an_abort(tmp_path):
    write_shards([fake_instance(i) for i in range(8)], tmp_path, 2)
    part = tmp_path / "part-1"
    part.write_bytes(part.read_bytes()[:-3])  # OneFlow's reader would SIGABRT on this file
    with pytest.raises(DataError, match=r"part-1: record 3 at byte offset \d+: record claims"):
        PretrainingLoader(tmp_path, batch_size=2, seq_length=SEQ, max_predictions_per_seq=PRED)
    write_shards([fake_instance(i, vocab_size=60) for i in range(8)], tmp_path, 2)
    with pytest.raises(DataError, match=r"token id 5\d at position \d+, outside the vocabulary \[0, 50\)"):
        PretrainingLoader(tmp_path, batch_size=2, seq_length=SEQ, max_predictions_per_seq=PRED, vocab_size=50)
    with pytest.raises(DataError, match="feature 'input_ids' has 32 values, expected 64"):
        PretrainingLoader(tmp_path, batch_size=2, seq_length=64, max_predictions_per_seq=PRED)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty has no part-0"):
        PretrainingLoader(tmp_path / "empty", batch_size=2)


def test_squad_loader(tmp_path):
    def rec(i, train):
        base = {"input_ids": np.full(16, 7, np.int32), "input_mask": np.ones(16, np.int32),
                "segment_ids": np.zeros(16, np.int32)}
        if train:
            return {**base, "start_positions": np.array([i % 16], np.int32), "end_positions": np.array([15], np.int32)}
        return {**base, "unique_ids": np.array([1_000_000_000 + i], np.int32)}
    write_shards([rec(i, True) for i in range(6)], tmp_path / "train", 2)
    write_shards([rec(i, False) for i in range(6)], tmp_path / "eval", 2)
    train = SquadLoader(tmp_path / "train", batch_size=3, seq_length=16, is_training=True, vocab_size=10)
    batch = train.next_batch()
    assert sorted(batch) == ["end_positions", "input_ids", "input_mask", "segment_ids", "start_positions"]
    assert tuple(batch["start_positions"].shape) == (3, 1)
    ev = SquadLoader(tmp_path / "eval", batch_size=6, seq_length=16, is_training=False)
    assert not ev.shuffle
    assert ev.next_batch()["unique_ids"].numpy().ravel().tolist() == [1_000_000_000 + i for i in (0, 2, 4, 1, 3, 5)]
    with pytest.raises(DataError, match="feature 'start_positions' is missing"):
        SquadLoader(tmp_path / "eval", batch_size=2, seq_length=16, is_training=True)


def test_iter_numpy_batches(data_dir):
    sizes = [len(b["input_ids"]) for b in iter_numpy_batches(data_dir, 16)]
    assert sizes == [16, 16, 8]
    assert [len(b["input_ids"]) for b in iter_numpy_batches(data_dir, 16, drop_last=True)] == [16, 16]


def test_two_ranks_read_disjoint_parts(tmp_path):
    """Under oneflow.distributed.launch each rank's local reader reads its own block of parts."""
    data = tmp_path / "data"
    write_shards([{"idx": np.array([i], np.int64)} for i in range(24)], data, 4)  # part p: i % 4 == p
    code = ("import sys; from bertlib.launch import run_launcher; "
            "sys.exit(run_launcher('tests.helpers.loader_rank', sys.argv[1:], nproc_per_node=2))")
    proc = subprocess.run([sys.executable, "-c", code, str(data), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["parts"] == [0, 1] and ranks[1]["parts"] == [2, 3]
    assert {i % 4 for i in ranks[0]["seen"]} == {0, 1}
    assert {i % 4 for i in ranks[1]["seen"]} == {2, 3}
    assert ranks[0]["records"] == ranks[1]["records"] == 12 and ranks[0]["steps_per_epoch"] == 4


def test_each_schema_brings_its_value_ranges(tmp_path):
    """bertlib.schemas is the one place the ranges live: loaders and validators check them."""
    from bertlib.schemas import pretraining_schema as schema_of, squad_schema

    seq = 16
    record = {"input_ids": np.full(seq, 7, np.int32), "input_mask": np.ones(seq, np.int32),
              "segment_ids": np.zeros(seq, np.int32), "start_positions": np.array([3], np.int32),
              "end_positions": np.array([seq], np.int32)}   # one past the last position
    write_shards([record], tmp_path, 1)
    train = squad_schema(seq, is_training=True)
    assert train.id_features == ("input_ids",) and train.value_ranges["end_positions"] == (0, seq)
    with pytest.raises(DataError, match="end_positions"):
        train.validate(tmp_path, 1, vocab_size=30)
    with pytest.raises(DataError, match="end_positions"):
        SquadLoader(tmp_path, batch_size=1, seq_length=seq, vocab_size=30)
    assert schema_of(SEQ, PRED).value_ranges["masked_lm_positions"] == (0, SEQ)
    assert pretraining_schema is schema_of  # the old import path is the same function
