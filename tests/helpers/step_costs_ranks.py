"""Two checks that need several ranks (run under bertlib.launch by tests/test_step_costs.py).

``allreduce OUT``: one tiny BERT step's gradients averaged by bertlib.trainer.average_gradients
(small buckets, so that several flat buffers are used) against OneFlow's DistributedDataParallel
on the same batch; rank 0 writes the largest difference and the gradients' size to OUT.

``graph_meta OUT``: three graph-mode Trainer steps; every batch tensor made global is recorded
with the check_meta it was made with; rank 0 writes the list to OUT.
"""
import json
import sys

from bertlib import runtime
from bertlib.launch import fail_fast

flow = runtime.import_oneflow()

from bertlib.config import BertConfig  # noqa: E402
from bertlib.model import BertForPreTraining  # noqa: E402
from bertlib.tasks.pretraining import pretraining_step_loss  # noqa: E402
from bertlib.trainer import Trainer, TrainOptions, _LossModule, average_gradients  # noqa: E402

from tests.helpers.syn_train import S, V, batches  # noqa: E402


def tiny_model():
    flow.manual_seed(7)   # the same initial weights on every rank, and for both copies
    return BertForPreTraining(BertConfig.tiny(vocab_size=V, hidden_size=32, intermediate_size=64,
                                              max_position_embeddings=S, hidden_dropout_prob=0.0,
                                              attention_probs_dropout_prob=0.0))


def grads(model):
    return [p.grad.numpy().copy() for p in model.parameters() if p.grad is not None]


def allreduce(out):
    batch = next(batches())                     # each rank its own rows
    ddp_model = tiny_model()
    ddp = flow.nn.parallel.DistributedDataParallel(_LossModule(ddp_model, pretraining_step_loss))
    ddp(batch)[0].backward()
    ours = tiny_model()
    _LossModule(ours, pretraining_step_loss)(batch)[0].backward()
    local = grads(ours)
    average_gradients(list(ours.parameters()), runtime.world_size(), bucket_bytes=16 << 10)
    a, b = grads(ddp_model), grads(ours)
    diff = max(float(abs(x - y).max()) for x, y in zip(a, b))
    changed = max(float(abs(x - y).max()) for x, y in zip(local, b))   # averaging did something
    if runtime.rank() == 0:
        json.dump({"max_diff": diff, "changed": changed, "tensors": len(a),
                   "numbers": int(sum(x.size for x in a))}, open(out, "w"))


def graph_meta(out):
    seen = []
    to_global = flow.Tensor.to_global

    def recording(self, *args, **kwargs):
        if self.is_local and kwargs.get("sbp") == flow.sbp.split(0):
            seen.append(kwargs.get("check_meta", True))
        return to_global(self, *args, **kwargs)

    flow.Tensor.to_global = recording
    options = TrainOptions(iter_num=3, batch_size_per_device=4, learning_rate=1e-3, warmup_batches=0,
                           mode="graph", progress=False, loss_print_every_n_iter=1)
    Trainer(tiny_model(), pretraining_step_loss, batches, options,
            metric_names=("total_loss", "mlm_loss", "nsp_loss")).fit()
    if runtime.rank() == 0:
        json.dump(seen, open(out, "w"))


if __name__ == "__main__":
    what, out = sys.argv[1], sys.argv[2]
    fail_fast({"allreduce": allreduce, "graph_meta": graph_meta}[what], out)
