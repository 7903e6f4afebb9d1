"""Graph mode: one training step compiled by OneFlow's ``nn.Graph``.

In eager mode Python dispatches every op of every step. A graph is traced once (forward, backward,
gradient clipping, learning-rate schedule and optimizer update together) and then replayed by
OneFlow's runtime, which may fuse ops and plan memory. Two consequences shape this file:

* anything that changes per step must be in the graph: the learning-rate schedule becomes a OneFlow
  scheduler (two chained ``LinearLR``: warm-up, then decay) and clipping an optimizer option;
* across processes a graph works on *global* tensors: parameters are ``broadcast`` (each rank holds
  the whole), batches ``split(0)`` (each rank holds its rows), and OneFlow inserts the gradient
  all-reduce itself. The loss it returns is ``partial_sum`` and is made ``broadcast`` to be read.

Mixed precision (``use_fp16``) lives here: ``enable_amp`` casts matmuls to float16 and a dynamic
loss scaler (growth every 2000 good steps, halve on overflow) keeps small gradients representable.
"""
from __future__ import annotations

from .runtime import import_oneflow

flow = import_oneflow()


def _placement(device: str):
    from . import runtime

    kind = "cuda" if device.startswith("cuda") else "cpu"
    return flow.placement(kind, ranks=list(range(runtime.world_size())))


def replicate(model, device: str):
    """Make every parameter a global tensor held whole by every rank (sbp broadcast)."""
    model.to_global(placement=_placement(device), sbp=flow.sbp.broadcast)


def _schedule(optimizer, warmup: int, total: int):
    """The scheduler equal to :func:`bertlib.optim.warmup_linear_decay` at every step.

    OneFlow's SequentialLR hands the *global* step to the second scheduler and LinearLR factors
    must stay in [0, 1]; so the base learning rate is raised by total / (total - warmup) and both
    pieces are written as fractions of it: decay = 1 - step / total, warm-up ends at
    (total - warmup) / total.
    """
    LinearLR = flow.optim.lr_scheduler.LinearLR
    warmup = min(warmup, total - 1)
    scale = total / (total - warmup)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = group["lr"] * scale
    decay = LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=total)
    if warmup <= 0:
        return decay
    if warmup == 1:
        warm = flow.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0 / scale, total_iters=1)
    else:
        warm = LinearLR(optimizer, start_factor=1.0 / (warmup * scale), end_factor=1.0 / scale,
                        total_iters=warmup - 1)
    return flow.optim.lr_scheduler.SequentialLR(optimizer, [warm, decay], milestones=[warmup])


class TrainStepGraph(flow.nn.Graph):
    def __init__(self, step_module, optimizer, scheduler, accumulation: int, use_fp16: bool):
        super().__init__()
        self.step_module = step_module
        self.keys = None  # the batch's field names, known at the first call
        self.add_optimizer(optimizer, lr_sch=scheduler)
        if accumulation > 1:
            self.config.set_gradient_accumulation_steps(accumulation)
        if use_fp16:
            self.config.enable_amp(True)
            self.set_grad_scaler(flow.amp.GradScaler(init_scale=2.0 ** 16, growth_factor=2.0,
                                                     backoff_factor=0.5, growth_interval=2000))
            # the fusions OneFlow's LiBai turns on with AMP (CUDA kernels): the optimizer update in
            # one kernel per parameter, residual adds folded into the op before them, and the
            # float16 casts folded into the loss-scale multiplications
            self.config.allow_fuse_model_update_ops(True)
            self.config.allow_fuse_add_to_output(True)
            self.config.allow_fuse_cast_scale(True)

    def build(self, *tensors):
        outs = self.step_module(dict(zip(self.keys, tensors)))
        outs[0].backward()
        return flow.stack(list(outs))                        # float32 [M]


class GraphTrainStep:
    """``step(batches) -> metrics``: one compiled optimizer step; its training state can be saved.

    The graph is made at once (not at the first step) because ``nn.Graph`` takes a saved state
    only before its first call.

    Dropout in a graph draws from a stream fixed when the graph compiles (re-seeding the layers'
    generators afterwards changes nothing) and that cannot be saved. So that a resumed run draws
    the masks an uninterrupted one does, the trainer calls :meth:`restart` after every checkpoint:
    a new graph with the same state, compiled at the next step after the dropout layers were
    re-seeded from (seed, step, rank), exactly as a run resumed from that checkpoint compiles.
    """

    def __init__(self, step_module, optimizer, scheduler, accumulation: int, use_fp16: bool,
                 placement):
        self._make = lambda: TrainStepGraph(step_module, optimizer, scheduler, accumulation, use_fp16)
        self._params = [p for group in optimizer.param_groups for p in group.parameters]
        self.graph = self._make()
        self.accumulation, self.placement = accumulation, placement
        self._checked = False   # the batches' meta-data checked across ranks (first step only)

    def restart(self, device: str):
        """Carry the training state into a new graph, which compiles at its first call."""
        state, keys = self.state_dict(), self.graph.keys
        for param in self._params:
            param.grad = None  # tracing a new graph's backward cannot accumulate into eager grads
        self.graph = self._make()
        self.graph.keys = keys
        self.load_state_dict(state, device)

    def __call__(self, batches):
        # with accumulation the graph takes all micro-batches of a step at once and splits them
        micro = [next(batches) for _ in range(self.accumulation)]
        if self.graph.keys is None:
            self.graph.keys = tuple(sorted(micro[0]))
        tensors = [flow.cat([m[k] for m in micro], dim=0) if self.accumulation > 1 else micro[0][k]
                   for k in self.graph.keys]
        if self.placement is not None:
            # every rank's rows must agree in shape and dtype: OneFlow checks that across ranks (a
            # collective) when asked; once per compiled graph is enough, as the shapes never change
            check = not self._checked
            tensors = [t.to_global(placement=self.placement, sbp=flow.sbp.split(0), check_meta=check)
                       for t in tensors]
            self._checked = True
        metrics = self.graph(*tensors)
        if self.placement is not None:
            metrics = metrics.to_global(placement=self.placement, sbp=flow.sbp.broadcast).to_local()
        if self.accumulation > 1:
            # the graph returns each micro-batch's metrics one after another, [acc * M]; a step's
            # metrics are their mean, as eager mode's
            metrics = metrics.reshape(self.accumulation, -1).mean(dim=0)   # [M]
        return metrics

    def state_dict(self) -> dict:
        """The graph's training state but the weights (saved on their own, in Hugging Face format):
        Adam moments, the train step that drives the compiled schedule, the loss scale under fp16.

        Local tensors on every rank; across ranks a collective, so every rank must call it.
        """
        state = {}
        for name, value in self.graph.state_dict().items():
            if name in self.graph._blocks:   # the modules' parameters
                continue
            if value.is_global:
                # some states (the train step) live on rank 0 only: copy them to every rank
                value = value.to_global(placement=self.placement, sbp=flow.sbp.broadcast).to_local()
            state[name] = value
        return state

    def load_state_dict(self, state: dict, device: str):
        """Load what :meth:`state_dict` returned (read by every rank); before the first step only."""
        kind = "cuda" if device.startswith("cuda") else "cpu"
        loaded = {}
        for name, value in state.items():
            value = value.to(kind)
            if self.placement is not None:
                value = value.to_global(placement=self.placement, sbp=flow.sbp.broadcast)
            loaded[name] = value
        self.graph.load_state_dict(loaded, strict=False)


def build_train_graph(step_module, optimizer, *, iter_num: int, warmup_batches: int,
                      accumulation: int = 1, clip_grad_norm: float = 1.0, use_fp16: bool = False,
                      device: str = "cpu", world: int = 1) -> GraphTrainStep:
    """Return the :class:`GraphTrainStep` that runs one compiled optimizer step.

    ``step_module(batch)`` returns the step's scalars (the first is optimised); ``batches`` is the
    rank's batch iterator, of which a step draws ``accumulation`` micro-batches. The learning-rate
    schedule (warm-up, then linear decay to 0 at ``iter_num``) and the gradient clipping are
    compiled into the graph; the schedule reads the graph's own step, so a resumed graph continues it.
    """
    if clip_grad_norm:  # 0: no clipping, as in eager mode
        for group in optimizer.param_groups:
            group["clip_grad_max_norm"] = clip_grad_norm
            group["clip_grad_norm_type"] = 2.0
    placement = _placement(device) if world > 1 else None
    scheduler = _schedule(optimizer, warmup_batches, iter_num)
    return GraphTrainStep(step_module, optimizer, scheduler, accumulation, use_fp16, placement)
