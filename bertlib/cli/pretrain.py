"""bert-pretrain: BERT pre-training (masked LM + next sentence) on OFRecord shards, on 1..N devices.

The flags are those of OneFlow-Benchmark's run_pretraining.py, with the same names and meanings,
plus what a modern run needs (--device, --mode, --optimizer, --num_accumulation_steps, --seed,
--config). The run itself is :mod:`bertlib.tasks.pretraining`; this module only parses flags.

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

from .. import runtime
from ..tasks import pretraining
from .common import (add_bool_flag, add_launch_flags, add_progress_flag, add_step_flags, check_launch_flags,
                     is_first_node, launch_kwargs, make_parser, options_from_args, print_config_block,
                     run_cli)

PROG = "bert-pretrain"


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        PROG, "BERT pre-training (MLM + NSP) on OneFlow.",
        epilog="Examples and multi-node launch: see the module docstring of bertlib.cli.pretrain "
               "or the README.")
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
    add_step_flags(g)
    add_bool_flag(g, "use_boxing_v2", True, "accepted for compatibility with OneFlow-Benchmark's "
                  "run_pretraining.py; has no effect in OneFlow 0.9")
    g.add_argument("--seed", type=int, default=12345, help="seed for init, dropout and shuffling")
    g = p.add_argument_group("data")
    g.add_argument("--data_dir", default=None,
                   help="directory of pre-training OFRecord parts (default: build the embedded corpus)")
    g.add_argument("--data_part_num", type=int, default=None,
                   help="number of part files in data_dir (default: count them); >= total processes")
    g.add_argument("--vocab_file", default=None,
                   help="vocab.txt matching the data; only needed to infer --vocab_size")
    g.add_argument("--seq_length", type=int, default=None,
                   help="tokens per sequence in the data (default: as data_dir's bertlib_data.json "
                        "records, else 128); a value the data contradicts is an error")
    g.add_argument("--max_predictions_per_seq", type=int, default=None,
                   help="masked positions per sequence in the data (default: as bertlib_data.json "
                        "records, else 20)")
    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--loss_print_every_n_iter", type=int, default=20, help="log period in iterations")
    g.add_argument("--model_save_every_n_iter", type=int, default=0, help="checkpoint period (0: never)")
    g.add_argument("--model_save_dir", default="./runs/pretrain/checkpoints", help="checkpoint directory")
    add_bool_flag(g, "save_last_snapshot", False, "save a checkpoint after the last iteration")
    add_bool_flag(g, "overwrite_output_dir", False,
                  "start afresh in a --model_save_dir that holds an earlier run's checkpoints, deleting "
                  "them (without it such a directory is refused unless --model_load_dir resumes from it)")
    g.add_argument("--keep_last_n", type=int, default=None,
                   help="keep only the newest N checkpoints (default: all); the one `latest` names "
                        "is never deleted")
    g.add_argument("--model_load_dir", default="",
                   help="checkpoint (step_N) or checkpoint directory to resume from")
    g.add_argument("--log_dir", default="./runs/pretrain", help="metrics.jsonl is written here")
    add_progress_flag(g, "no progress bar")
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


def resolved_settings(args, prepared) -> dict:
    """The flags as the run resolved them: the config block shows what runs, not what was left out."""
    config, opts = prepared.config, prepared.options
    return {**vars(args), "data_dir": opts.data_dir, "data_part_num": opts.data_part_num,
            "vocab_file": opts.vocab_file, "seq_length": opts.seq_length,
            "max_predictions_per_seq": opts.max_predictions_per_seq,
            "warmup_batches": opts.warmup_batches, "mode": opts.mode,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "max_position_embeddings": config.max_position_embeddings,
            "type_vocab_size": config.type_vocab_size, "vocab_size": config.vocab_size,
            "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
            "hidden_dropout_prob": config.hidden_dropout_prob,
            "hidden_size_per_head": config.hidden_size // config.num_attention_heads}


def _pretrain(args):
    check_launch_flags(args)
    world = args.gpu_num_per_node * args.node_num
    options = options_from_args(pretraining.PretrainingOptions, args,
                                model_load_dir=args.model_load_dir or None)
    # validated here, before any process starts: a bad shard would otherwise abort every rank
    # node 0 alone claims the directories: its rank 0 writes them
    prepared = pretraining.prepare(options, max(world, runtime.world_size()), claim=is_first_node(args))
    if is_first_node(args) and runtime.is_main_process():
        print_config_block(resolved_settings(args, prepared), args.node_num, args.gpu_num_per_node)
    if world > 1:
        pretraining.launch(prepared.options, validate=False, **launch_kwargs(args))
    else:
        pretraining.run(prepared.options, validate=False)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, _pretrain, args)


if __name__ == "__main__":
    sys.exit(main())
