"""BERT pre-training (masked LM + next sentence) as a task: options in, trained model and log out.

    from bertlib.tasks import pretraining

    result = pretraining.run(pretraining.PretrainingOptions(iter_num=20, device="cpu"))
    result.records[-1]["total_loss"], result.model          # in this process
    result = pretraining.launch(options, nproc_per_node=2)  # 2 processes, data parallel

The path of a run: :func:`prepare` resolves the data (the embedded corpus when no ``data_dir``),
validates every shard and resolves the model config; :func:`run` builds
:class:`~bertlib.model.BertForPreTraining` and hands :func:`pretraining_step_loss` and the rank's
:class:`~bertlib.loaders.PretrainingLoader` to :class:`~bertlib.trainer.Trainer`.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import runtime
from ..rundirs import release
from ..trainer import TrainOptions, check_train_values, global_batch_size, read_metrics, training_mode
from ._ranks import LaunchError, launch_ranks

__all__ = ["PretrainingOptions", "PretrainingResult", "Prepared", "prepare", "resolve_config",
           "pretraining_step_loss", "log_line", "run", "launch",
           "LaunchError"]

METRIC_NAMES = ("total_loss", "mlm_loss", "nsp_loss")
# Before a run, every record's framing is checked and the first records of each part are decoded
# field by field: all of them for data sets up to this size per part, a sample beyond (a 10M-record
# set in 64 parts would otherwise cost ~14 minutes at the ~12,000 records/s measured here);
# `bert-validate-data` decodes every record when that is wanted.
DECODE_PER_PART = 20_000
PRESETS = (None, "tiny", "base", "large")


@dataclass
class PretrainingOptions:
    """One pre-training run. The fields are ``bert-pretrain``'s flags, with the same meanings."""
    # optimisation
    learning_rate: float = 1e-3            # peak learning rate
    weight_decay_rate: float = 0.01        # not applied to biases and LayerNorm
    batch_size_per_device: int = 32        # micro-batch per process
    num_accumulation_steps: int = 1        # micro-batches accumulated per optimizer step
    iter_num: int = 200                    # optimizer steps in total
    warmup_batches: int | None = None      # linear warm-up steps (None: 10% of iter_num)
    optimizer: str = "adamw"               # adamw | lamb
    use_fp16: bool = False                 # mixed precision (CUDA; runs in graph mode)
    mode: str = "eager"                    # eager | graph (a compiled nn.Graph)
    seed: int = 12345                      # init, dropout and shuffling
    device: str = "auto"                   # auto | cuda | cpu
    # data
    data_dir: str | None = None            # OFRecord parts (None: build the embedded corpus)
    data_part_num: int | None = None       # part files in data_dir (None: count them)
    vocab_file: str | None = None          # vocab.txt of the data (None: bertlib_data.json's)
    seq_length: int | None = None          # tokens per sequence (None: bertlib_data.json's, else 128)
    max_predictions_per_seq: int | None = None  # masked positions (None: bertlib_data.json's, else 20)
    # logging and checkpoints
    loss_print_every_n_iter: int = 20      # log period in iterations
    model_save_every_n_iter: int = 0       # checkpoint period (0: never)
    model_save_dir: str | None = "./runs/pretrain/checkpoints"  # checkpoint directory
    save_last_snapshot: bool = False       # checkpoint after the last iteration
    keep_last_n: int | None = None         # keep only the newest N checkpoints (None: all)
    overwrite_output_dir: bool = False     # start afresh in a model_save_dir holding a finished run
    model_load_dir: str | None = None      # checkpoint (step_N) or directory to resume from
    log_dir: str | None = "./runs/pretrain"  # metrics.jsonl goes here
    progress: bool = True                  # a progress bar when stderr is a terminal
    # model: a preset or config.json, then per-field overrides (None: the config's value)
    config: str | None = None              # tiny (default), base, large, or a config.json path
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    hidden_size_per_head: int | None = None  # hidden = heads x this; feed-forward = 4 x hidden
    max_position_embeddings: int | None = None
    type_vocab_size: int | None = None
    vocab_size: int | None = None          # None: from vocab_file or the default data's vocab
    attention_probs_dropout_prob: float | None = None
    hidden_dropout_prob: float | None = None

    def check(self, world: int = 1):
        """Raise ValueError on settings no run can use (before any data is touched)."""
        for name in ("batch_size_per_device", "iter_num", "loss_print_every_n_iter",
                     "num_accumulation_steps", "seq_length", "max_predictions_per_seq", "keep_last_n"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1 (got {getattr(self, name)})")
        if self.warmup_batches is not None and self.warmup_batches < 0:
            raise ValueError("--warmup_batches must be >= 0")
        check_train_values(self)
        for name in ("attention_probs_dropout_prob", "hidden_dropout_prob"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"--{name} must be in [0, 1) (got {value})")
        if self.data_part_num is not None and self.data_part_num < world:
            raise ValueError(
                f"--data_part_num {self.data_part_num} is smaller than the number of processes "
                f"({world}); each process reads its own parts, so write at least that many parts "
                "(bert-make-pretraining-data --data_part_num)")


@dataclass
class Prepared:
    """What :func:`prepare` resolved: options with no data or schedule field left to default."""
    options: PretrainingOptions
    config: object                         # bertlib.config.BertConfig


@dataclass
class PretrainingResult:
    records: list[dict]                    # the log records (iter, losses, speed, learning rate)
    config: object                         # the model's BertConfig
    options: PretrainingOptions            # as resolved (data_dir, warmup_batches, ...)
    model: object = None                   # the trained model (run() only; launch(): None)
    log_dir: str | None = None             # where metrics.jsonl is


def resolve_config(options: PretrainingOptions, vocab_size: int | None = None):
    """The BertConfig a run trains: preset or file, then the options' per-field overrides."""
    from ..config import BertConfig

    preset = options.config in PRESETS
    config = BertConfig.preset(options.config or "tiny") if preset else BertConfig.from_json(options.config)
    fields = config.to_dict()
    if options.num_attention_heads or options.hidden_size_per_head:
        heads = options.num_attention_heads or config.num_attention_heads
        per_head = options.hidden_size_per_head or config.hidden_size // config.num_attention_heads
        fields.update(hidden_size=heads * per_head, num_attention_heads=heads,
                      intermediate_size=4 * heads * per_head)
    for name in ("num_hidden_layers", "max_position_embeddings", "type_vocab_size",
                 "attention_probs_dropout_prob", "hidden_dropout_prob"):
        if getattr(options, name) is not None:
            fields[name] = getattr(options, name)
    if options.vocab_size is not None:
        fields["vocab_size"] = options.vocab_size
    elif vocab_size is not None and preset:
        fields["vocab_size"] = vocab_size
    config = BertConfig(**fields)
    if options.seq_length > config.max_position_embeddings:
        raise ValueError(f"--seq_length {options.seq_length} exceeds max_position_embeddings "
                         f"{config.max_position_embeddings}")
    return config


def data_metadata(data_dir) -> dict:
    """What ``bert-make-pretraining-data`` recorded in ``data_dir/bertlib_data.json`` ({} if none)."""
    import json

    from ..pretraining_data import METADATA_FILE

    try:
        meta = json.loads((Path(data_dir) / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _data_shape(options: PretrainingOptions, meta: dict, data_dir) -> dict:
    """seq_length and max_predictions_per_seq: the flag, else the data's record, else 128 / 20.

    A flag that contradicts the record is an error: the reader would frame every record wrongly.
    """
    shape = {}
    for name, default in (("seq_length", 128), ("max_predictions_per_seq", 20)):
        given, recorded = getattr(options, name), meta.get(name)
        if given is not None and recorded is not None and given != recorded:
            raise ValueError(f"--{name} {given} contradicts the data: {data_dir} was made with "
                             f"{name} {recorded} (bertlib_data.json); leave --{name} out")
        shape[name] = given if given is not None else recorded if recorded is not None else default
    return shape


def _resolve_data(options: PretrainingOptions) -> tuple[Path, int, int | None]:
    """(data_dir, data_part_num, vocab size or None), building the default data when none is given.

    ``options`` must have its data shape resolved (:func:`_data_shape`).
    """
    from ..tokenization import read_vocab

    vocab_file = options.vocab_file
    if options.data_dir is None:
        from ..resources import default_pretraining_data

        data_dir, default_vocab = default_pretraining_data(
            seq_length=options.seq_length, max_predictions_per_seq=options.max_predictions_per_seq)
        vocab_file = vocab_file or default_vocab
    else:
        data_dir = Path(options.data_dir)
        if not data_dir.is_dir():
            raise ValueError(f"--data_dir {data_dir} is not a directory")
    parts = options.data_part_num
    if parts is None:
        parts = len([p for p in Path(data_dir).glob("part-*") if p.is_file()])
        if parts == 0:
            raise ValueError(f"--data_dir {data_dir} has no part-* files")
    vocab_size = options.vocab_size or (len(read_vocab(vocab_file)) if vocab_file else None)
    return Path(data_dir), parts, vocab_size


def prepare(options: PretrainingOptions, world: int = 1, validate: bool = True,
            claim: bool = True) -> Prepared:
    """Resolve the data, schedule and model config of a run of ``world`` processes.

    With ``validate`` every shard is checked first (framing, features, token ids below the vocab
    size, labels and positions in range, parts >= processes): OneFlow's reader would abort the
    process on a bad part and return zeros for out-of-range ids. Raises ValueError (or a
    subclass: DataError, VocabError is a FileNotFoundError) on bad input.

    With ``validate`` a ``model_load_dir`` is checked against the run too, and with ``claim`` (the
    machine whose rank 0 writes: only the first node) the run's directories are checked
    (:func:`claim_run_dirs`); :func:`run` and :func:`launch` hold them for the run's life.
    """
    from ..schemas import pretraining_schema

    options.check(world)
    meta = data_metadata(options.data_dir) if options.data_dir else {}
    options = dataclasses.replace(options, **_data_shape(options, meta, options.data_dir),
                                  vocab_file=options.vocab_file or _recorded_vocab(meta))
    data_dir, parts, vocab_size = _resolve_data(options)
    if options.vocab_file is None and options.data_dir is None:
        from ..resources import default_vocab

        options = dataclasses.replace(options, vocab_file=str(default_vocab()))
    if validate:  # once, here: the ranks are handed the checked options
        pretraining_schema(options.seq_length, options.max_predictions_per_seq).validate(
            data_dir, parts, num_ranks=world, vocab_size=vocab_size, max_records_per_part=DECODE_PER_PART,
            progress=options.progress and sys.stderr.isatty())
    config = resolve_config(options, vocab_size)
    mode = training_mode(options.mode, options.use_fp16, options.device)   # here, not in every rank
    if mode != options.mode and runtime.is_main_process():
        print("--use_fp16: running in --mode graph (OneFlow's dynamic loss scaling needs it)")
    warmup = options.warmup_batches
    resolved = dataclasses.replace(
        options, data_dir=str(data_dir), data_part_num=parts, vocab_size=config.vocab_size, mode=mode,
        warmup_batches=warmup if warmup is not None else max(1, options.iter_num // 10))
    if validate:
        check_resume_options(resolved, config, world)
        if claim:  # checked now; held by run() or launch() for the run's life
            release(claim_run_dirs(resolved, config))
    return Prepared(resolved, config)


def _saves(options: PretrainingOptions) -> bool:
    every = options.model_save_every_n_iter
    return bool(options.model_save_dir) and bool(every or options.save_last_snapshot)


def check_resume_options(options: PretrainingOptions, config, world: int):
    """Refuse a ``model_load_dir`` this run cannot resume exactly (CheckpointError, a ValueError):
    incomplete or malformed, another model, processes, batch or mode, or nothing left to train."""
    if not options.model_load_dir:
        return
    from ..checkpoint import check_config_matches, check_resume, read_checkpoint
    from ..config import BertConfig

    ckpt, state = read_checkpoint(options.model_load_dir)
    check_config_matches(BertConfig.from_json(ckpt / "model" / "config.json"), config, ckpt)
    check_resume(ckpt, state, iter_num=options.iter_num, world_size=world,
                 global_batch=global_batch_size(options.batch_size_per_device,
                                                options.num_accumulation_steps, world),
                 batch_size_per_device=options.batch_size_per_device, mode=options.mode,
                 warmup_batches=options.warmup_batches, learning_rate=options.learning_rate)


def claim_run_dirs(options: PretrainingOptions, config) -> list:
    """Check and lock ``model_save_dir`` (when the run saves) and ``log_dir`` (see
    :mod:`bertlib.rundirs`); RunDirError when one is unusable. Release with
    :func:`bertlib.rundirs.release`."""
    from ..rundirs import checkpoint_bytes, claim_dirs

    return claim_dirs(options.model_save_dir if _saves(options) else None,
                      resume_from=options.model_load_dir, overwrite=options.overwrite_output_dir,
                      need_bytes=checkpoint_bytes(config), other_dirs=((options.log_dir, "--log_dir"),))


def _recorded_vocab(meta: dict) -> str | None:
    """The vocab file bertlib_data.json names, if it is still there."""
    path = meta.get("vocab_file")
    return path if isinstance(path, str) and Path(path).is_file() else None


def tokenizer_of(options: PretrainingOptions) -> tuple[str, bool] | None:
    """(vocab file, lower-cased) of the run's data, for the tokenizer files saved with the model.

    Lower-casing as the data recorded it, else as the vocab's case says (an uncased vocab has no
    capitalised tokens); None when the run names no vocab.
    """
    if not options.vocab_file:
        return None
    from ..squad.features import check_vocab_case
    from ..tokenization import read_vocab

    settings = data_metadata(options.data_dir).get("settings", {}) if options.data_dir else {}
    lowercase = settings.get("lowercase") if isinstance(settings, dict) else None
    if not isinstance(lowercase, bool):
        try:
            lowercase = check_vocab_case(read_vocab(options.vocab_file), True)  # raises if cased
        except ValueError:
            lowercase = False
    return str(options.vocab_file), lowercase


def log_line(r: dict) -> str:
    """OneFlow-Benchmark's run_pretraining.py log line, with the two losses it sums.

    The learning rate and the time left follow the original fields, which keep their exact form:
    scripts written for run_pretraining.py's output still parse the line.
    """
    from ..records import format_eta

    line = (f"iter {r['iter']}, total_loss: {r['total_loss']:.3f}, mlm_loss: {r['mlm_loss']:.3f}, "
            f"nsp_loss: {r['nsp_loss']:.3f}, speed: {r['sec_per_batch']:.3f}(sec/batch), "
            f"{r['sentences_per_sec']:.3f}(sentences/sec)")
    if "learning_rate" in r:
        line += f", lr: {r['learning_rate']:.2e}"
    if "eta_seconds" in r:
        line += f", eta: {format_eta(r['eta_seconds'])}"
    return line


def pretraining_step_loss(model, batch):
    """(total, mlm, nsp) for one batch of the pre-training schema (see bertlib.schemas)."""
    from ..model import pretraining_loss

    out = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                masked_lm_positions=batch["masked_lm_positions"])
    return pretraining_loss(out.prediction_logits, out.seq_relationship_logits,
                            batch["masked_lm_ids"], batch["masked_lm_weights"],
                            batch["next_sentence_labels"], kernels=model.config.kernels)


def _batches(options: PretrainingOptions, device: str):
    """This rank's shuffled, endless batches (validated by prepare, so only framed here)."""
    from ..loaders import PretrainingLoader

    return iter(PretrainingLoader(
        options.data_dir, batch_size=options.batch_size_per_device, seq_length=options.seq_length,
        max_predictions_per_seq=options.max_predictions_per_seq, data_part_num=options.data_part_num,
        shuffle=True, seed=options.seed, device=device, validate=False))


def run(options: PretrainingOptions, validate: bool = True, claim: bool = True) -> PretrainingResult:
    """Pre-train in this process: the whole job, or one rank of it under the launcher.

    ``validate=False`` skips the shard checks (for options :func:`prepare` already resolved);
    ``claim=False``: the directories are held by another process (the launching one).
    """
    world = runtime.world_size()
    prepared = prepare(options, world, validate=validate, claim=claim)
    opts, config = prepared.options, prepared.config
    locks = claim_run_dirs(opts, config) if claim else []
    try:
        return _train(opts, config, world)
    finally:
        release(locks)


def _train(opts: PretrainingOptions, config, world: int) -> PretrainingResult:
    from ..model import BertForPreTraining
    from ..trainer import Trainer

    flow = runtime.import_oneflow()
    device = runtime.resolve_device(opts.device)
    if runtime.is_main_process():
        batch = global_batch_size(opts.batch_size_per_device, opts.num_accumulation_steps, world)
        print(f"model: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
              f"{config.num_attention_heads} heads, vocab {config.vocab_size}; device {device}; "
              f"{world} process(es); global batch {batch}", flush=True)
    if runtime.is_main_process() and opts.log_dir:
        from ..records import write_run_config

        write_run_config(opts.log_dir, "pretraining", opts, world, model_config=config.to_dict())
    flow.manual_seed(opts.seed)
    model = BertForPreTraining(config)
    tokenizer = tokenizer_of(opts)
    if tokenizer is not None:  # checkpoints then open in AutoTokenizer and chain into bert-squad
        model.set_tokenizer(*tokenizer)
    train_options = TrainOptions.from_options(opts, run_args=dataclasses.asdict(opts))
    trainer = Trainer(model, pretraining_step_loss, lambda: _batches(opts, device), train_options,
                      device=device, metric_names=METRIC_NAMES, log_line=log_line)
    records = trainer.fit()
    if runtime.is_main_process() and records:
        first, last = records[0], records[-1]
        print(f"done: {opts.iter_num} iterations; total_loss {first['total_loss']:.3f} -> "
              f"{last['total_loss']:.3f}; {last['sentences_per_sec']:.1f} sentences/s", flush=True)
    return PretrainingResult(records, config, opts, model=trainer.model, log_dir=opts.log_dir)


def launch(options: PretrainingOptions, nproc_per_node: int = 2, node_num: int = 1,
           node_list: str | None = None, master_port: int | None = None,
           relay_stdout: bool = True, validate: bool = True) -> PretrainingResult:
    """Pre-train in ``nproc_per_node`` new processes on this machine (x ``node_num`` machines).

    Everything is validated here first (a ValueError before any process starts); the ranks print
    their log through this process's stdout, and the records come back from ``log_dir``'s
    metrics.jsonl (rank 0 writes it; without a ``log_dir`` there are none). Raises
    :class:`LaunchError` when a rank fails. The trained weights are in ``model_save_dir`` when the
    options save checkpoints.
    ``validate=False``: the options come from :func:`prepare` already.
    """
    runtime.check_launch_devices(options.device, nproc_per_node)  # no silent CPU processes, a GPU per rank
    first = first_node(node_list, node_num)
    prepared = prepare(options, nproc_per_node * node_num, validate=validate, claim=first)
    locks = claim_run_dirs(prepared.options, prepared.config) if first else []
    try:
        launch_ranks("pretraining", dataclasses.asdict(prepared.options), nproc_per_node, node_num,
                     node_list, master_port, relay_stdout=relay_stdout)
    finally:
        release(locks)
    opts = prepared.options
    records = read_metrics(opts.log_dir) if opts.log_dir else []   # no log_dir: no records kept
    return PretrainingResult(records, prepared.config, opts, log_dir=opts.log_dir)


def first_node(node_list: str | None, node_num: int) -> bool:
    """Whether this machine is node 0, whose rank 0 writes (and so claims) the run's directories."""
    from ..launch import node_rank_from_list

    return node_num == 1 or node_rank_from_list(node_list, node_num)[0] == 0


def rank_main(payload: dict):
    """One launched rank: the options were resolved and the data validated by the parent."""
    run(PretrainingOptions(**payload), validate=False, claim=False)
