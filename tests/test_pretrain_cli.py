"""bert-pretrain as a user runs it: the flags, config block and log line of OneFlow-Benchmark's
run_pretraining.py; errors before launch."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bertlib.datasets import find_data
from helpers.shards import make_wikitext_shards

ROOT = Path(__file__).resolve().parents[1]
DATA = find_data()  # full-size when found, else the samples shipped with bertlib
SEED_FLAGS = ("gpu_num_per_node node_num node_list learning_rate weight_decay_rate batch_size_per_device "
              "iter_num warmup_batches data_dir data_part_num use_fp16 use_boxing_v2 "
              "loss_print_every_n_iter model_save_every_n_iter model_save_dir save_last_snapshot "
              "model_load_dir log_dir seq_length max_predictions_per_seq num_hidden_layers "
              "num_attention_heads max_position_embeddings type_vocab_size vocab_size "
              "attention_probs_dropout_prob hidden_dropout_prob hidden_size_per_head").split()
# run_pretraining.py's fields, exactly; bertlib's learning rate and time left may only follow them
LOG_LINE = re.compile(r"^iter (\d+), total_loss: \d+\.\d{3}, mlm_loss: \d+\.\d{3}, nsp_loss: \d+\.\d{3}, "
                      r"speed: \d+\.\d{3}\(sec/batch\), \d+\.\d{3}\(sentences/sec\)"
                      r"(, lr: \d\.\d{2}e[-+]\d{2}, eta: (?:\d+d )?\d+:\d{2}:\d{2})?$")
SMALL_MODEL = ["--num_hidden_layers", "1", "--num_attention_heads", "2", "--hidden_size_per_head", "16",
               "--batch_size_per_device", "4", "--no_progress"]


def pretrain(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "bertlib.cli.pretrain", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_wikitext_shards(tmp_path_factory.mktemp("shards"), data_part_num=4)


def test_help_documents_every_original_flag():
    proc = pretrain("--help")
    assert proc.returncode == 0
    for flag in SEED_FLAGS + ["device", "mode", "optimizer", "num_accumulation_steps", "seed", "config"]:
        assert f"--{flag}" in proc.stdout, flag
    text = " ".join(proc.stdout.split())
    assert "has no effect in OneFlow 0.9" in text  # use_boxing_v2 says so
    assert "(default: None)" not in text


def test_single_process_run_prints_the_original_format(shards, tmp_path):
    proc = pretrain("--device", "cpu", "--data_dir", shards, "--vocab_file", DATA.vocab,
                    "--iter_num", 6, "--loss_print_every_n_iter", 3, "--log_dir", tmp_path, *SMALL_MODEL)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert "Running bert: num_gpu_per_node = 1, num_nodes = 1." in out
    assert "vocab_size = 30522" in out and "hidden_size_per_head = 16" in out
    logged = [LOG_LINE.match(line) for line in out if line.startswith("iter ")]
    assert [m.group(1) for m in logged if m] == ["2", "5"], out
    assert all(m.group(2) for m in logged), out  # with the suffix
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["iter"] for r in records] == [2, 5]
    assert all(r["sentences_per_sec"] > 0 and r["total_loss"] > 0 for r in records)
    assert records[0]["eta_seconds"] > 0 and records[-1]["eta_seconds"] == 0
    assert logged[-1].group(0).endswith(", eta: 0:00:00")


def test_too_few_parts_for_the_processes_is_refused_before_launch(shards):
    proc = pretrain("--gpu_num_per_node", 8, "--device", "cpu", "--data_dir", shards, *SMALL_MODEL,
                    timeout=60)
    assert proc.returncode == 2
    assert "data_part_num=4 but 8 ranks" in proc.stderr, proc.stderr
    assert "Running bert" not in proc.stdout  # nothing was started


def test_a_corrupt_shard_is_a_clear_error_not_an_abort(shards, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    part = bad / "part-1"
    part.write_bytes(part.read_bytes()[:1000])  # truncated mid-record
    proc = pretrain("--gpu_num_per_node", 2, "--device", "cpu", "--data_dir", bad, *SMALL_MODEL,
                    timeout=60)
    assert proc.returncode == 2
    assert "part-1" in proc.stderr and "record" in proc.stderr, proc.stderr


def test_fp16_on_cpu_is_a_clear_error(shards):
    proc = pretrain("--device", "cpu", "--data_dir", shards, "--use_fp16", "--iter_num", 1, *SMALL_MODEL)
    assert proc.returncode == 2
    assert "--use_fp16 needs a CUDA device" in proc.stderr


def test_bad_model_load_dir_is_a_clear_error(shards, tmp_path):
    proc = pretrain("--device", "cpu", "--data_dir", shards, "--model_load_dir", tmp_path / "missing",
                    "--iter_num", 1, *SMALL_MODEL)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
