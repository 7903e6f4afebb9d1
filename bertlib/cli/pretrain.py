"""bert-pretrain: BERT pre-training (masked LM + next sentence) on OFRecord shards, on 1..N devices.

The flags are the seed's ``run_pretraining.py`` flags, with the same names and meanings, plus what a
modern run needs (--device, --mode, --optimizer, --num_accumulation_steps, --seed, --config).

Quick start (no data, no download: builds a small corpus from Python's own docs on first use)::

    bert-pretrain                                          # 1 process, tiny BERT, ~2 minutes on a CPU
    bert-pretrain --gpu_num_per_node 2 --device cpu        # 2 CPU processes, data parallel

On GPUs, one process per GPU, BERT-base on your own shards::

    bert-pretrain --gpu_num_per_node 4 --config base --data_dir /data/of_wiki_seq_len_128 \\
        --data_part_num 64 --batch_size_per_device 24 --learning_rate 1e-4 --iter_num 100000 \\
        --warmup_batches 10000 --model_save_dir ./checkpoints --model_save_every_n_iter 10000

Two machines (run the same command on both; node_list's first host is the master)::

    bert-pretrain --node_num 2 --node_list 192.168.1.12,192.168.1.14 --gpu_num_per_node 8 ...
"""
from __future__ import annotations

import argparse
import sys
import time

from .. import runtime
from ..launch import fail_fast, in_launched_rank, run_launcher
from ._help import DefaultsFormatter, add_launch_flags

BANNER = "=" * 66
RULE = "-" * 66


def str2bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if value.lower() in ("0", "false", "no", "n", "off", "none"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bert-pretrain", description="BERT pre-training (MLM + NSP) on OneFlow.",
        epilog="Examples and multi-node launch: see the module docstring of bertlib.cli.pretrain "
               "or the README.", formatter_class=DefaultsFormatter)
    add_launch_flags(p)
    g = p.add_argument_group("optimisation")
    g.add_argument("--learning_rate", type=float, default=1e-3, help="peak learning rate")
    g.add_argument("--weight_decay_rate", type=float, default=0.01,
                   help="weight decay (not applied to biases and LayerNorm)")
    g.add_argument("--batch_size_per_device", type=int, default=32, help="micro-batch per process")
    g.add_argument("--num_accumulation_steps", type=int, default=1,
                   help="micro-batches accumulated per optimizer step")
    g.add_argument("--iter_num", type=int, default=200, help="optimizer steps in total")
    g.add_argument("--warmup_batches", type=int, default=None,
                   help="linear warm-up steps (default: 10%% of iter_num), then linear decay to 0")
    g.add_argument("--optimizer", choices=("adamw", "lamb"), default="adamw", help="optimizer")
    g.add_argument("--use_fp16", type=str2bool, nargs="?", const=True, default=False,
                   help="mixed precision with dynamic loss scaling (CUDA only; implies --mode graph)")
    g.add_argument("--use_boxing_v2", type=str2bool, nargs="?", const=True, default=True,
                   help="accepted for compatibility with the seed; has no effect in OneFlow 0.9")
    g.add_argument("--mode", choices=("eager", "graph"), default="eager",
                   help="eager Python steps, or a compiled OneFlow nn.Graph")
    g.add_argument("--seed", type=int, default=12345, help="seed for init, dropout and shuffling")
    g = p.add_argument_group("data")
    g.add_argument("--data_dir", default=None,
                   help="directory of pre-training OFRecord parts (default: build the embedded corpus)")
    g.add_argument("--data_part_num", type=int, default=None,
                   help="number of part files in data_dir (default: count them); >= total processes")
    g.add_argument("--vocab_file", default=None,
                   help="vocab.txt matching the data; only needed to infer --vocab_size")
    g.add_argument("--seq_length", type=int, default=128, help="tokens per sequence in the data")
    g.add_argument("--max_predictions_per_seq", type=int, default=20,
                   help="masked positions per sequence in the data")
    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--loss_print_every_n_iter", type=int, default=20, help="log period in iterations")
    g.add_argument("--model_save_every_n_iter", type=int, default=0, help="checkpoint period (0: never)")
    g.add_argument("--model_save_dir", default="./runs/pretrain/checkpoints", help="checkpoint directory")
    g.add_argument("--save_last_snapshot", type=str2bool, nargs="?", const=True, default=False,
                   help="save a checkpoint after the last iteration")
    g.add_argument("--model_load_dir", default="",
                   help="checkpoint (step_N) or checkpoint directory to resume from")
    g.add_argument("--log_dir", default="./runs/pretrain", help="metrics.jsonl is written here")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("model (default: the tiny preset; --config base for BERT-base)")
    g.add_argument("--config", default=None,
                   help="a preset (tiny, base, large) or a BertConfig/HF config.json path")
    g.add_argument("--num_hidden_layers", type=int, default=None, help="encoder layers")
    g.add_argument("--num_attention_heads", type=int, default=None, help="attention heads")
    g.add_argument("--hidden_size_per_head", type=int, default=None,
                   help="width of one head; hidden size = heads x this, feed-forward = 4 x hidden")
    g.add_argument("--max_position_embeddings", type=int, default=None, help="learned positions")
    g.add_argument("--type_vocab_size", type=int, default=None, help="segment types")
    g.add_argument("--vocab_size", type=int, default=None,
                   help="vocabulary size (default: from --vocab_file or the default data's vocab)")
    g.add_argument("--attention_probs_dropout_prob", type=float, default=None,
                   help="dropout on attention probabilities (default 0.1)")
    g.add_argument("--hidden_dropout_prob", type=float, default=None,
                   help="dropout on embeddings and sub-layer outputs (default 0.1)")
    return p


def resolve_model_config(args, vocab_size: int | None):
    from ..config import BertConfig

    if args.config in (None, "tiny", "base", "large"):
        config = BertConfig.preset(args.config or "tiny")
    else:
        config = BertConfig.from_json(args.config)
    heads = args.num_attention_heads or config.num_attention_heads
    per_head = args.hidden_size_per_head or (config.hidden_size // config.num_attention_heads)
    fields = config.to_dict()
    if args.num_attention_heads or args.hidden_size_per_head:
        fields.update(hidden_size=heads * per_head, num_attention_heads=heads,
                      intermediate_size=4 * heads * per_head)
    for name in ("num_hidden_layers", "max_position_embeddings", "type_vocab_size",
                 "attention_probs_dropout_prob", "hidden_dropout_prob"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.vocab_size is not None:
        fields["vocab_size"] = args.vocab_size
    elif vocab_size is not None and args.config in (None, "tiny", "base", "large"):
        fields["vocab_size"] = vocab_size
    config = BertConfig(**fields)
    if args.seq_length > config.max_position_embeddings:
        raise ValueError(f"--seq_length {args.seq_length} exceeds max_position_embeddings "
                         f"{config.max_position_embeddings}")
    return config


def resolved_model_flags(config) -> dict:
    """The seed's model flags as the resolved config has them."""
    return {"num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "max_position_embeddings": config.max_position_embeddings,
            "type_vocab_size": config.type_vocab_size, "vocab_size": config.vocab_size,
            "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
            "hidden_dropout_prob": config.hidden_dropout_prob,
            "hidden_size_per_head": config.head_size}


def count_vocab(path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.rstrip("\n"))


def prepare_data(args, world: int):
    """Resolve data_dir/data_part_num/vocab_size and validate the shards. Returns (data_dir, parts, vocab)."""
    from pathlib import Path

    from ..ofrecord import validate_data_dir
    from ..pretraining_data import pretraining_schema

    vocab_file = args.vocab_file
    if args.data_dir is None:
        from ..resources import default_pretraining_data

        data_dir, default_vocab = default_pretraining_data(
            seq_length=args.seq_length, max_predictions_per_seq=args.max_predictions_per_seq)
        vocab_file = vocab_file or default_vocab
    else:
        data_dir = Path(args.data_dir)
        if not data_dir.is_dir():
            raise ValueError(f"--data_dir {data_dir} is not a directory")
    parts = args.data_part_num
    if parts is None:
        parts = len([p for p in Path(data_dir).glob("part-*") if p.is_file()])
        if parts == 0:
            raise ValueError(f"--data_dir {data_dir} has no part-* files")
    vocab_size = args.vocab_size or (count_vocab(vocab_file) if vocab_file else None)
    validate_data_dir(data_dir, pretraining_schema(args.seq_length, args.max_predictions_per_seq),
                      data_part_num=parts, num_ranks=world, vocab_size=vocab_size)
    return Path(data_dir), parts, vocab_size


def print_config_block(args, world_nodes, gpus):
    print(BANNER)
    print(f"Running bert: num_gpu_per_node = {gpus}, num_nodes = {world_nodes}.")
    print(BANNER)
    for key, value in vars(args).items():
        print(f"{key} = {'' if value is None and key == 'model_load_dir' else value}")
    print(RULE)
    print(f"Time stamp: {time.strftime('%Y-%m-%d-%H:%M:%S', time.localtime())}", flush=True)


def log_line(r: dict) -> str:
    return (f"iter {r['iter']}, total_loss: {r['total_loss']:.3f}, mlm_loss: {r['mlm_loss']:.3f}, "
            f"nsp_loss: {r['nsp_loss']:.3f}, speed: {r['sec_per_batch']:.3f}(sec/batch), "
            f"{r['sentences_per_sec']:.3f}(sentences/sec)")


def pretraining_step_loss(model, batch):
    """(total, mlm, nsp) for one batch of the pre-training schema (see bertlib.loaders)."""
    from ..model import pretraining_loss

    out = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                masked_lm_positions=batch["masked_lm_positions"])
    return pretraining_loss(out.prediction_logits, out.seq_relationship_logits,
                            batch["masked_lm_ids"], batch["masked_lm_weights"],
                            batch["next_sentence_labels"])


def run(args) -> list[dict]:
    """The body of one rank: build data, model and trainer, train. Returns the log records."""
    from ..loaders import PretrainingLoader
    from ..model import BertForPreTraining
    from ..trainer import Trainer, TrainOptions

    flow = runtime.import_oneflow()
    world = runtime.world_size()
    device = runtime.resolve_device(args.device)
    data_dir, parts, vocab_size = prepare_data(args, world)
    config = resolve_model_config(args, vocab_size)
    if args.use_fp16 and args.mode == "eager" and device.startswith("cuda"):
        # OneFlow 0.9's loss scaler works in graphs only, so mixed precision means graph mode
        args.mode = "graph"
        if runtime.is_main_process():
            print("--use_fp16: running in --mode graph (OneFlow's dynamic loss scaling needs it)")
    warmup = args.warmup_batches if args.warmup_batches is not None else max(1, args.iter_num // 10)
    # the config block shows what runs, not which flags were left at their defaults
    args = argparse.Namespace(**{**vars(args), "data_dir": str(data_dir), "data_part_num": parts,
                                 "warmup_batches": warmup, **resolved_model_flags(config)})
    if runtime.is_main_process():
        print_config_block(args, args.node_num, args.gpu_num_per_node)
        print(f"model: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
              f"{config.num_attention_heads} heads, vocab {config.vocab_size}; device {device}; "
              f"{world} process(es); global batch "
              f"{world * args.batch_size_per_device * args.num_accumulation_steps}", flush=True)
    flow.manual_seed(args.seed)
    model = BertForPreTraining(config)

    def make_batches(skip):
        loader = PretrainingLoader(
            data_dir, batch_size=args.batch_size_per_device, seq_length=args.seq_length,
            max_predictions_per_seq=args.max_predictions_per_seq, data_part_num=parts,
            shuffle=True, seed=args.seed, device=device, validate=False)
        it = iter(loader)
        for _ in range(skip):
            next(it)
        return it

    options = TrainOptions(
        iter_num=args.iter_num, batch_size_per_device=args.batch_size_per_device,
        learning_rate=args.learning_rate, weight_decay_rate=args.weight_decay_rate,
        warmup_batches=warmup, optimizer=args.optimizer,
        num_accumulation_steps=args.num_accumulation_steps, seed=args.seed, mode=args.mode,
        use_fp16=bool(args.use_fp16), loss_print_every_n_iter=args.loss_print_every_n_iter,
        model_save_every_n_iter=args.model_save_every_n_iter,
        save_last_snapshot=bool(args.save_last_snapshot), model_save_dir=args.model_save_dir,
        model_load_dir=args.model_load_dir or None, log_dir=args.log_dir,
        progress=not args.no_progress, run_args=vars(args))
    trainer = Trainer(model, pretraining_step_loss, make_batches, options, device=device,
                      metric_names=("total_loss", "mlm_loss", "nsp_loss"), log_line=log_line)
    records = trainer.fit()
    if runtime.is_main_process() and records:
        first, last = records[0], records[-1]
        print(f"done: {args.iter_num} iterations; total_loss {first['total_loss']:.3f} -> "
              f"{last['total_loss']:.3f}; {last['sentences_per_sec']:.1f} sentences/s", flush=True)
    return records


def check_args(args):
    for name in ("gpu_num_per_node", "node_num", "batch_size_per_device", "iter_num",
                 "loss_print_every_n_iter", "num_accumulation_steps", "seq_length",
                 "max_predictions_per_seq"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1 (got {getattr(args, name)})")
    if args.warmup_batches is not None and args.warmup_batches < 0:
        raise ValueError("--warmup_batches must be >= 0")
    if args.data_part_num is not None and args.data_part_num < args.gpu_num_per_node * args.node_num:
        raise ValueError(
            f"--data_part_num {args.data_part_num} is smaller than the number of processes "
            f"({args.node_num} node(s) x {args.gpu_num_per_node}); each process reads its own parts, "
            "so write at least that many parts (bert-make-pretraining-data --data_part_num)")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    total = args.gpu_num_per_node * args.node_num
    if total > 1 and not in_launched_rank():
        try:
            check_args(args)
            if args.device == "cuda" or args.device == "auto":
                pass  # each rank resolves its own cuda:<local_rank>
            # validate before starting processes: a bad shard would otherwise abort every rank
            prepare_data(args, total)
        except (ValueError, FileNotFoundError) as exc:
            print(f"bert-pretrain: error: {exc}", file=sys.stderr)
            return 2
        return run_launcher("bertlib.pretrain", argv, nproc_per_node=args.gpu_num_per_node,
                            node_num=args.node_num, node_list=args.node_list,
                            master_port=args.master_port)
    try:
        check_args(args)
    except ValueError as exc:
        print(f"bert-pretrain: error: {exc}", file=sys.stderr)
        return 2
    if in_launched_rank():
        fail_fast(run, args)
        return 0
    try:
        run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"bert-pretrain: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
