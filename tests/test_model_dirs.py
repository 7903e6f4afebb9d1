"""Saved model directories carry their tokenizer: vocab.txt, tokenizer_config.json and
special_tokens_map.json beside config.json + model.safetensors.

So bertlib's commands chain without repeating --vocab_file (pre-train -> fine-tune -> answer), and
the Hugging Face ecosystem opens the directories: checked against real ``transformers`` in the
bench's reference venv (.bench-venv-ref, made by bench/setup_reference_env.sh) when it exists, or
in this interpreter when it can import transformers; skipped otherwise.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bertlib.datasets import find_data

ROOT = Path(__file__).resolve().parents[1]
DATA = find_data()
VOCAB = DATA.vocab  # bert-base-uncased's 30,522 tokens
TINY = ["--num_hidden_layers", "1", "--num_attention_heads", "2", "--hidden_size_per_head", "16",
        "--batch_size_per_device", "4", "--no_progress", "--device", "cpu"]
SQUAD_SMALL = ["--max_seq_length", "128", "--doc_stride", "64", "--max_query_length", "32",
               "--batch_size_per_device", "4", "--loss_print_every_n_iter", "1", "--device", "cpu",
               "--no_progress"]
TEXTS = ["Tokenization splits rare words into pieces.", "Héllo, WORLD! Ça va? naïve café",
         "Beyoncé Giselle Knowles-Carter (born September 4, 1981) is an American singer.",
         "東京 is in 日本; 3.14159 + x_y = z", "[MASK] stays [MASK] but Mask is lower-cased"]


def cli(module, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", f"bertlib.cli.{module}", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def tiny_qa_model(path, vocab=VOCAB, do_lower_case=True):
    from bertlib.config import BertConfig
    from bertlib.model import BertForQuestionAnswering
    from bertlib.runtime import import_oneflow

    import_oneflow().manual_seed(0)
    model = BertForQuestionAnswering(BertConfig.tiny(vocab_size=30522))
    return model.set_tokenizer(vocab, do_lower_case).save_pretrained(path)


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory):
    return tiny_qa_model(tmp_path_factory.mktemp("qa") / "model")


def test_saved_dir_holds_the_tokenizer_files(qa_dir):
    assert sorted(os.listdir(qa_dir)) == ["config.json", "model.safetensors", "special_tokens_map.json",
                                          "tokenizer_config.json", "vocab.txt"]
    assert (qa_dir / "vocab.txt").read_bytes() == Path(VOCAB).read_bytes()
    config = json.loads((qa_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BertTokenizer"
    assert config["do_lower_case"] is True
    assert config["model_max_length"] == 512  # the tiny preset's position embeddings
    special = json.loads((qa_dir / "special_tokens_map.json").read_text())
    assert special == {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                       "cls_token": "[CLS]", "mask_token": "[MASK]"}


def test_bertlib_reloads_the_dir_without_a_vocab_argument(qa_dir):
    from bertlib.model import BertForQuestionAnswering
    from bertlib.squad.answer import resolve_model_dir
    from bertlib.tasks.squad import SquadOptions, _resolve_model

    model = BertForQuestionAnswering.from_pretrained(qa_dir)
    assert model.config.vocab_size == 30522
    assert resolve_model_dir(qa_dir) == (qa_dir, qa_dir / "vocab.txt", True)
    model_dir, vocab, size = _resolve_model(SquadOptions(init_checkpoint=str(qa_dir)))
    assert (model_dir, vocab, size) == (qa_dir, qa_dir / "vocab.txt", 30522)


def test_cased_model_records_no_lower_casing(tmp_path):
    from bertlib.squad.answer import resolve_model_dir

    cased = tmp_path / "cased_vocab.txt"
    cased.write_text("".join(t + "\n" for t in
                             ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "The", "Cat", "sat", "on", "Mat"]))
    path = tiny_qa_model(tmp_path / "model", vocab=cased, do_lower_case=False)
    assert json.loads((path / "tokenizer_config.json").read_text())["do_lower_case"] is False
    assert resolve_model_dir(path)[2] is False


def test_bert_squad_takes_lower_casing_from_the_checkpoint(tmp_path):
    """A cased model chains too: no --do_lower_case needed, tokenizer_config.json says false."""
    from bertlib.tasks.squad import SquadOptions, prepare

    words = Path(VOCAB).read_text(encoding="utf-8").splitlines()
    cased = tmp_path / "cased_vocab.txt"
    cased.write_text("\n".join(w.capitalize() if w.isalpha() and i % 3 == 0 else w
                               for i, w in enumerate(words)) + "\n", encoding="utf-8")
    model_dir = tiny_qa_model(tmp_path / "cased", vocab=cased, do_lower_case=False)
    options = SquadOptions(init_checkpoint=str(model_dir), do_eval=True, predict_file=str(DATA.squad_dev),
                           max_eval_examples=2, max_seq_length=128, doc_stride=64, max_query_length=32,
                           output_dir=str(tmp_path / "out"), progress=False)
    info = prepare(options)
    assert options.do_lower_case is False and info["do_lower_case"] is False
    assert info["vocab_file"] == str(model_dir / "vocab.txt")
    uncased = SquadOptions(init_checkpoint=str(tiny_qa_model(tmp_path / "uncased")), do_eval=True,
                           predict_file=str(DATA.squad_dev), max_eval_examples=2, max_seq_length=128,
                           doc_stride=64, max_query_length=32, output_dir=str(tmp_path / "out2"),
                           progress=False)
    assert prepare(uncased)["do_lower_case"] is True


def test_saving_again_over_a_dir_keeps_its_vocab(qa_dir, tmp_path):
    """A model loaded from a dir and saved back into it: vocab.txt copied onto itself stays whole."""
    from bertlib.model import BertForQuestionAnswering

    copy = tmp_path / "model"
    shutil.copytree(qa_dir, copy)
    model = BertForQuestionAnswering.from_pretrained(copy).set_tokenizer(copy / "vocab.txt", True)
    model.save_pretrained(copy)
    assert (copy / "vocab.txt").read_bytes() == Path(VOCAB).read_bytes()
    assert not [p for p in copy.iterdir() if p.name.endswith(".tmp")]


def test_a_model_that_knows_no_vocab_saves_weights_only(tmp_path):
    from bertlib.config import BertConfig
    from bertlib.model import BertForQuestionAnswering

    path = BertForQuestionAnswering(BertConfig.tiny(vocab_size=64)).save_pretrained(tmp_path / "m")
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]


def test_pretrain_then_fine_tune_then_answer_with_no_vocab_flag(tmp_path):
    """The chain a user runs: the vocab comes from the data (bertlib_data.json), then from each dir."""
    from bertlib.resources import default_pretraining_data

    data_dir, data_vocab = default_pretraining_data()
    ckpts = tmp_path / "ckpt"
    proc = cli("pretrain", "--data_dir", data_dir, "--iter_num", 2, "--loss_print_every_n_iter", 1,
               "--model_save_dir", ckpts, "--save_last_snapshot", "--log_dir", tmp_path / "log", *TINY)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    step_model = ckpts / "step_2" / "model"
    assert (step_model / "vocab.txt").read_bytes() == Path(data_vocab).read_bytes()
    assert json.loads((step_model / "tokenizer_config.json").read_text())["do_lower_case"] is True

    out = tmp_path / "squad"
    proc = cli("squad", "--do_train", "--init_checkpoint", ckpts, "--train_file", DATA.squad_train,
               "--max_train_examples", 8, "--iter_num", 1, "--output_dir", out, *SQUAD_SMALL)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"from {step_model}" in proc.stdout
    assert (out / "model" / "vocab.txt").read_bytes() == Path(data_vocab).read_bytes()
    assert json.loads((out / "run_config.json").read_text())["inputs"]["model_dir"] == str(step_model)

    proc = cli("squad_answer", "--model_dir", out / "model", "--question", "Who wrote it?",
               "--context", "The module was written by Guido.", "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # an untrained model may find no span; whatever it answers must sit in the context
    for answer in json.loads(proc.stdout)["answers"]:
        assert "The module was written by Guido."[answer["start"]:answer["end"]] == answer["text"]


# ------------------------------------------------------------------------ real transformers
REF_PYTHON = ROOT / ".bench-venv-ref" / "bin" / "python"

TRANSFORMERS_CHECK = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("ignore")
    from transformers import AutoTokenizer
    qa_dir, pretrain_dir, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    out = {}
    for name, path in (("qa", qa_dir), ("pretrain", pretrain_dir)):
        tok = AutoTokenizer.from_pretrained(path)
        out[name] = {"len": len(tok), "class": type(tok).__name__,
                     "max_len": tok.model_max_length,
                     "ids": [tok(t)["input_ids"] for t in texts]}
    try:
        import torch  # noqa: F401
    except ImportError:
        out["qa_model"] = None
    else:
        from transformers import BertForPreTraining, BertForQuestionAnswering
        model, info = BertForQuestionAnswering.from_pretrained(qa_dir, output_loading_info=True)
        ids = torch.tensor([out["qa"]["ids"][0]])
        logits = model(input_ids=ids).start_logits
        out["qa_model"] = {"missing": sorted(info["missing_keys"]), "mismatched": [
            str(m) for m in info["mismatched_keys"]], "shape": list(logits.shape)}
        model, info = BertForPreTraining.from_pretrained(pretrain_dir, output_loading_info=True)
        out["pretrain_model"] = {"missing": sorted(info["missing_keys"])}
    print(json.dumps(out))
""")


def _transformers_python():
    """An interpreter with transformers, or None: the reference venv first, then this one."""
    if REF_PYTHON.is_file():
        check = subprocess.run([str(REF_PYTHON), "-c", "import transformers"], capture_output=True)
        if check.returncode == 0:
            return str(REF_PYTHON)
    try:
        import transformers  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def test_transformers_opens_the_dirs(qa_dir, tmp_path):
    python = _transformers_python()
    if python is None:
        pytest.skip("transformers is not importable here and there is no reference venv "
                    f"({REF_PYTHON.parent.parent}; create it with bench/setup_reference_env.sh)")
    from bertlib.config import BertConfig
    from bertlib.model import BertForPreTraining
    from bertlib.tokenization import load_tokenizer

    pretrain_dir = BertForPreTraining(BertConfig.tiny(vocab_size=30522)).set_tokenizer(
        VOCAB, True).save_pretrained(tmp_path / "step_1" / "model")
    proc = subprocess.run([python, "-c", TRANSFORMERS_CHECK, str(qa_dir), str(pretrain_dir),
                           json.dumps(TEXTS)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = [e.ids for e in load_tokenizer(VOCAB, lowercase=True).encode_batch(TEXTS)]
    for name in ("qa", "pretrain"):
        assert out[name]["len"] == 30522, out[name]
        assert out[name]["max_len"] == 512
        assert out[name]["ids"] == ours, name
    if out["qa_model"] is not None:  # torch is there too: the weights load into transformers' classes
        assert out["qa_model"] == {"missing": [], "mismatched": [], "shape": [1, len(ours[0])]}
        assert out["pretrain_model"] == {"missing": []}
