"""Optimiser recipe: which parameters decay, and the warm-up + linear decay schedule (eager and graph)."""
import pytest

from bertlib.config import BertConfig
from bertlib.model import BertForPreTraining
from bertlib.optim import build_optimizer, parameter_groups, warmup_linear_decay


def test_no_decay_on_biases_and_layernorm():
    model = BertForPreTraining(BertConfig.tiny(vocab_size=100))
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith(("bias", "LayerNorm.weight")) for p in no_decay["params"])
    assert all(not names[id(p)].endswith(("bias", "LayerNorm.weight")) for p in decay["params"])
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedule_shape():
    values = [warmup_linear_decay(s, 10, 100) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[55] == pytest.approx(0.5)
    assert values[99] == pytest.approx(1 / 90)  # the last step still learns a little
    assert all(a <= b for a, b in zip(values[:10], values[1:10]))
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


@pytest.mark.parametrize("warmup,total", [(10, 40), (1, 20), (0, 15)])
def test_graph_scheduler_matches_eager_schedule(warmup, total):
    from bertlib.graph import _schedule

    model = BertForPreTraining(BertConfig.tiny(vocab_size=100))
    opt = build_optimizer(model, "adamw", 2e-3, 0.01)
    sched = _schedule(opt, warmup, total)
    for step in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 * warmup_linear_decay(step, warmup, total))
        opt.step()
        sched.step()


def test_unknown_optimizer():
    model = BertForPreTraining(BertConfig.tiny(vocab_size=100))
    with pytest.raises(ValueError, match="adamw or lamb"):
        build_optimizer(model, "sgd", 1e-3, 0.0)
    assert type(build_optimizer(model, "lamb", 1e-3, 0.01)).__name__ == "LAMB"
