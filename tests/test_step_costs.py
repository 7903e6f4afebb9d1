"""What a training step costs beside its maths: all-reduces, device syncs, cross-rank checks, and
the metrics a graph step with accumulation reports (graph/GPU issue, points 2, 3 and 5)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertlib import runtime
from test_trainer import losses, run_job

flow = runtime.import_oneflow()
ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ("import sys; from bertlib.launch import run_launcher; "
          "sys.exit(run_launcher('tests.helpers.step_costs_ranks', sys.argv[1:], nproc_per_node=2))")


def two_ranks(what, out):
    proc = subprocess.run([sys.executable, "-c", LAUNCH, what, str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(Path(out).read_text())


def test_flat_buffer_all_reduce_equals_ddp(tmp_path):
    """Gradients all-reduced in place (those of 1 KB or more here) or packed into flat buffers
    (16 KB buckets here: biases and LayerNorm) are DDP's gradients, to float rounding."""
    result = two_ranks("allreduce", tmp_path / "r.json")
    assert result["tensors"] > 20 and result["numbers"] * 4 > 4 * (16 << 10)   # several buckets
    assert result["max_diff"] < 1e-6, result
    assert result["changed"] > 1e-4, result        # the two ranks' gradients did differ


def test_buckets_split_at_the_limit_and_keep_order():
    from bertlib.trainer import _buckets

    ts = [flow.zeros(n) for n in (10, 10, 30, 5, 1)]          # 40, 40, 120, 20, 4 bytes
    groups = list(_buckets(ts, limit=80))
    assert [[t.numel() for t in g] for g in groups] == [[10, 10], [30], [5, 1]]
    assert [t for g in groups for t in g] == ts


def test_graph_batches_are_meta_checked_on_the_first_step_only(tmp_path):
    """OneFlow's cross-rank meta check (a collective) runs for the first step's 7 batch tensors,
    not on every step."""
    seen = two_ranks("graph_meta", tmp_path / "m.json")
    assert seen == [True] * 7 + [False] * 14


def test_graph_with_accumulation_logs_the_mean_of_its_micro_batches(tmp_path):
    """A graph step over 2 micro-batches reports their mean, as eager mode does (it reported the
    first micro-batch's metrics before)."""
    eager, graph = tmp_path / "e.json", tmp_path / "g.json"
    for mode, out in (("eager", eager), ("graph", graph)):
        proc, _ = run_job(["--iters", "3", "--mode", mode, "--accumulation", "2", "--no_dropout",
                           "--out", str(out)])
        assert proc.returncode == 0, proc.stderr
    e, g = losses(eager), losses(graph)
    assert [r[0] for r in g] == [0, 1, 2]
    for re_, rg in zip(e, g):
        assert rg[1:] == pytest.approx(re_[1:], abs=5e-5), (re_, rg)


def _count_reseeds(monkeypatch, **trainer_kwargs):
    from bertlib import model as model_mod
    from bertlib.tasks.pretraining import pretraining_step_loss
    from bertlib.trainer import Trainer, TrainOptions
    from tests.helpers.syn_train import S, V, batches

    calls = {"layers": 0, "generator": 0}
    real = model_mod.reseed_dropout

    def counting(model, seed):
        calls["layers"] += 1
        return real(model, seed)

    monkeypatch.setattr(model_mod, "reseed_dropout", counting)
    mode = trainer_kwargs.pop("mode")
    flow.manual_seed(7)
    model = model_mod.BertForPreTraining(model_mod.BertConfig.tiny(
        vocab_size=V, hidden_size=32, intermediate_size=64, max_position_embeddings=S, kernels="reference"))
    options = TrainOptions(iter_num=4, batch_size_per_device=4, learning_rate=1e-3, warmup_batches=0,
                           mode=mode, progress=False, loss_print_every_n_iter=4)
    trainer = Trainer(model, pretraining_step_loss, batches, options, **trainer_kwargs)
    if trainer.dropout_generator is not None:
        gen = trainer.dropout_generator

        class Counting:
            def manual_seed(self, seed):
                calls["generator"] += 1
                gen.manual_seed(seed)

        trainer.dropout_generator = Counting()
    trainer.fit()
    return calls


def test_graph_mode_seeds_dropout_once_before_it_compiles(monkeypatch):
    assert _count_reseeds(monkeypatch, mode="graph") == {"layers": 1, "generator": 0}


def test_eager_mode_with_a_shared_generator_seeds_once_a_step(monkeypatch):
    """What eager CUDA runs do (there, seeding a generator waits for the device): one generator
    for every dropout layer, seeded once per step instead of every layer's."""
    assert _count_reseeds(monkeypatch, mode="eager", shared_dropout_generator=True) == \
        {"layers": 0, "generator": 4}
    assert _count_reseeds(monkeypatch, mode="eager") == {"layers": 4, "generator": 0}


def test_shared_dropout_generator_resumes_exactly_and_masks_differ_by_layer(tmp_path):
    full, first, second, off = (tmp_path / n for n in ("full.json", "a.json", "b.json", "off.json"))
    common = ["--kernels", "reference", "--shared_dropout_generator"]
    assert run_job(["--iters", "4", *common, "--out", str(full)])[0].returncode == 0
    proc, _ = run_job(["--iters", "2", *common, "--save_dir", str(tmp_path / "ck"), "--save_every", "2",
                       "--out", str(first)])
    assert proc.returncode == 0, proc.stderr
    proc, _ = run_job(["--iters", "4", *common, "--load", str(tmp_path / "ck"), "--out", str(second)])
    assert proc.returncode == 0, proc.stderr
    assert losses(first) + losses(second) == losses(full)
    proc, _ = run_job(["--iters", "4", "--kernels", "reference", "--no_dropout", "--out", str(off)])
    assert losses(off) != losses(full)   # dropout was on


def test_shared_generator_is_refused_for_numpy_masks_on_the_cpu():
    from bertlib.model import BertConfig, BertForPreTraining, share_dropout_generator

    model = BertForPreTraining(BertConfig.tiny(vocab_size=300, hidden_size=32, intermediate_size=64))
    with pytest.raises(ValueError, match="kernels='reference'"):
        share_dropout_generator(model, "cpu")


def test_gradients_exist_from_the_backward_pass_to_the_step_only():
    """Between steps no parameter holds a gradient, so the next forward pass can reuse their memory
    (BERT-base: 440 MB per process); at the optimizer step every parameter has one."""
    from bertlib import model as model_mod
    from bertlib.tasks.pretraining import pretraining_step_loss
    from bertlib.trainer import Trainer, TrainOptions
    from tests.helpers.syn_train import S, V, batches

    flow.manual_seed(7)
    model = model_mod.BertForPreTraining(model_mod.BertConfig.tiny(
        vocab_size=V, hidden_size=32, intermediate_size=64, max_position_embeddings=S))
    before = [p.numpy().copy() for p in model.parameters()]
    options = TrainOptions(iter_num=3, batch_size_per_device=2, num_accumulation_steps=2,
                           learning_rate=1e-3, warmup_batches=0, progress=False, loss_print_every_n_iter=3)
    trainer = Trainer(model, pretraining_step_loss, lambda: batches(micro=2), options)
    with_grads, step = [], trainer.optimizer.step

    def counting_step(*args, **kwargs):
        with_grads.append(sum(p.grad is not None for p in model.parameters()))
        return step(*args, **kwargs)

    trainer.optimizer.step = counting_step
    trainer.fit()
    params = list(model.parameters())
    assert with_grads == [len(params)] * 3
    assert all(p.grad is None for p in params)
    assert any(not np.array_equal(a, p.numpy()) for a, p in zip(before, params))   # it did train
