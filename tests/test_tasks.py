"""The task layer in-process, as a notebook calls it: the same run as the CLI, results returned.

Tiny settings for a 2-core CPU: a 1-layer BERT for a few steps of pre-training, a 2-layer random
BERT with the real vocab for a few real SQuAD questions.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bertlib.datasets import find_data
from helpers.shards import make_wikitext_shards, save_tiny_qa_model

ROOT = Path(__file__).resolve().parents[1]
DATA = find_data()  # full-size when found, else the samples shipped with bertlib
VOCAB, TRAIN, DEV = DATA.vocab, DATA.squad_train, DATA.squad_dev
needs_data = pytest.mark.skipif(TRAIN is None, reason="no SQuAD training file in the data found")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_wikitext_shards(tmp_path_factory.mktemp("shards"), data_part_num=2)


def small_pretraining(shards, log_dir, **overrides):
    from bertlib.tasks.pretraining import PretrainingOptions

    fields = dict(data_dir=str(shards), vocab_file=str(VOCAB), iter_num=4, loss_print_every_n_iter=2,
                  num_hidden_layers=1, num_attention_heads=2, hidden_size_per_head=16,
                  batch_size_per_device=4, device="cpu", progress=False, log_dir=str(log_dir),
                  model_save_dir=None)
    return PretrainingOptions(**{**fields, **overrides})


def test_pretraining_run_in_process_equals_the_cli(shards, tmp_path):
    from bertlib.tasks import pretraining

    result = pretraining.run(small_pretraining(shards, tmp_path / "task"))
    assert [r["iter"] for r in result.records] == [1, 3]
    assert result.config.num_hidden_layers == 1 and result.config.vocab_size == 30522
    assert result.options.warmup_batches == 1 and result.options.data_part_num == 2
    from bertlib.summary import count_parameters

    assert count_parameters(result.model) > 0

    proc = subprocess.run(
        [sys.executable, "-m", "bertlib.cli.pretrain", "--device", "cpu", "--data_dir", shards,
         "--vocab_file", VOCAB, "--iter_num", "4", "--loss_print_every_n_iter", "2",
         "--num_hidden_layers", "1", "--num_attention_heads", "2", "--hidden_size_per_head", "16",
         "--batch_size_per_device", "4", "--no_progress", "--log_dir", tmp_path / "cli"],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    for name in ("total_loss", "mlm_loss", "nsp_loss"):
        assert [r[name] for r in cli] == pytest.approx([r[name] for r in result.records], rel=1e-5)


def test_pretraining_launch_returns_the_records_of_two_processes(shards, tmp_path, capsys):
    from bertlib.tasks import pretraining

    result = pretraining.launch(small_pretraining(shards, tmp_path, iter_num=2, loss_print_every_n_iter=1),
                                nproc_per_node=2)
    assert [r["iter"] for r in result.records] == [0, 1]
    assert all(r["total_loss"] > 0 for r in result.records)
    out = capsys.readouterr().out
    assert "2 process(es); global batch 8" in out and "iter 1, total_loss:" in out  # relayed


def test_bad_options_fail_before_any_work(tmp_path):
    from bertlib.tasks import pretraining, squad

    with pytest.raises(ValueError, match="--iter_num must be >= 1"):
        pretraining.prepare(pretraining.PretrainingOptions(iter_num=0))
    with pytest.raises(ValueError, match="smaller than the number of processes"):
        pretraining.prepare(pretraining.PretrainingOptions(data_part_num=1), world=2)
    with pytest.raises(squad.UsageError, match="nothing to do"):
        squad.prepare(squad.SquadOptions(output_dir=str(tmp_path)))


@pytest.fixture(scope="module")
def tiny_qa(tmp_path_factory):
    return save_tiny_qa_model(tmp_path_factory.mktemp("tiny_qa") / "model")


@needs_data
def test_squad_run_fine_tunes_predicts_and_scores_in_process(tiny_qa, tmp_path):
    from bertlib.tasks import squad

    options = squad.SquadOptions(
        init_checkpoint=str(tiny_qa), vocab_file=str(VOCAB), do_train=True, do_eval=True,
        train_file=str(TRAIN), max_train_examples=8, predict_file=str(DEV), max_eval_examples=4,
        iter_num=2, max_seq_length=128, doc_stride=64, max_query_length=32, batch_size_per_device=4,
        eval_batch_size_per_device=16, loss_print_every_n_iter=1, learning_rate=1e-3, device="cpu",
        progress=False, output_dir=str(tmp_path))
    results = squad.run(options)
    assert results["total"] == 4 and results["missing"] == 0
    assert results["train"]["steps"] == 2 and [r["iter"] for r in results["train"]["records"]] == [0, 1]
    written = json.loads((tmp_path / "eval_results.json").read_text())
    assert written["f1"] == results["f1"] and "records" not in written["train"]

    # the fine-tuned weights again, through the separate steps: prepare, load, predict, score
    again = squad.SquadOptions(**{**options.__dict__, "do_train": False, "output_dir": str(tmp_path / "again"),
                                  "init_checkpoint": str(tmp_path / "model")})
    info = squad.prepare(again)
    model, _ = squad.load_qa_model(info["model_dir"])
    predicted = squad.predict(model, again, info, device="cpu")
    assert set(predicted["predictions"]) == set(json.loads((tmp_path / "predictions.json").read_text()))
    scores = squad.score(info["predict_file"], predicted["predictions"])
    assert scores["exact_match"] == pytest.approx(results["exact_match"])
    assert scores["f1"] == pytest.approx(results["f1"])


def test_prepare_decodes_a_sample_of_large_parts_and_frames_all(shards, tmp_path, monkeypatch):
    """The records past DECODE_PER_PART of a part are framed, not decoded: a bad id there passes
    prepare() (bert-validate-data decodes every record), a broken frame anywhere does not."""
    import shutil

    from bertlib.ofrecord import read_records, write_shards
    from bertlib.tasks import pretraining

    data = tmp_path / "data"
    shutil.copytree(shards, data)
    records = list(read_records([data / "part-1"]))
    records[-1]["input_ids"][0] = 10**6                     # beyond the vocab, in the last record
    (data / "part-1").unlink()
    write_shards(records, tmp_path / "one", 1)
    shutil.move(tmp_path / "one" / "part-0", data / "part-1")
    options = small_pretraining(data, tmp_path / "log")
    with pytest.raises(ValueError, match="token id 1000000"):
        pretraining.prepare(options)                        # all records decoded: small parts
    monkeypatch.setattr(pretraining, "DECODE_PER_PART", 10)
    pretraining.prepare(options)                            # the bad record is past the sample
    part = data / "part-1"
    part.write_bytes(part.read_bytes()[:-5])
    with pytest.raises(ValueError, match="record claims"):
        pretraining.prepare(options)
