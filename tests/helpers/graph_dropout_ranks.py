"""Under a 2-process launch: the masks two seeded dropout layers draw inside one nn.Graph over a
batch split across the ranks. Rank 0 writes every rank's masks (gathered) to ``--out`` as JSON."""
import argparse
import json

from bertlib import runtime
from bertlib.launch import fail_fast

flow = runtime.import_oneflow()

from bertlib.model import reseed_dropout  # noqa: E402
from bertlib.fast.layers import SeededDropout  # noqa: E402


class Two(flow.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = SeededDropout(0.5), SeededDropout(0.5)

    def forward(self, x):
        return flow.stack([self.a(x), self.b(x)])


class Step(flow.nn.Graph):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def build(self, x):
        return self.module(x)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    module = Two()
    reseed_dropout(module, 1234 + runtime.rank())   # as the trainer does: (seed, step, rank)
    placement = flow.placement("cpu", ranks=list(range(runtime.world_size())))
    x = flow.ones(4, 64).to_global(placement=placement, sbp=flow.sbp.split(0))  # 4 rows a rank: [8, 64]
    graph = Step(module)
    steps = []
    for _ in range(2):
        masks = graph(x)                                                # [2 layers, 4, 64]
        local = masks.to_global(placement=placement, sbp=flow.sbp.broadcast).to_local()
        steps.append(local.numpy().tolist())
    if runtime.rank() == 0:
        with open(args.out, "w") as f:
            json.dump(steps, f)


if __name__ == "__main__":
    fail_fast(main)
