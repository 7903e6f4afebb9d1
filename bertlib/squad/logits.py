"""Start/end logits for many SQuAD windows: batches of similar length, with their padding cut off.

A window is ``[CLS] question [SEP] context [SEP]`` followed by padding up to ``max_seq_length``.
On SQuAD's dev set at seq 384 the windows hold 178 tokens on average and only 2.4% are full, so a
batch padded to 384 is mostly padding. The padding cannot change the logits of the real tokens
(the attention mask gives it weight exp(-10000) = 0 in every softmax), so prediction can skip it:

1. take the windows a pool at a time (``pool_batches`` batches), in the order given;
2. sort the pool by length, longest first, and cut it into batches;
3. run each batch cut to its longest window (a batch of 150-token windows costs 150 / 384 of the
   dense layers' work and (150 / 384)^2 of the attention's);
4. hand back every window's logits in the original order, ``-inf`` at its padding positions.

Padding positions get ``-inf`` rather than what a model would say there: they are not part of
the window, post-processing never picks them, and they no longer take places among the
``n_best_size`` highest logits that post-processing considers (Google's recipe takes the top 20
over all 384 positions, padding included, then drops the invalid ones).
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

import numpy as np

POOL_BATCHES = 16   # batches sorted together: longer pools pad less, shorter ones report progress sooner


def _pools(windows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    pool = []
    for window in windows:
        pool.append(window)
        if len(pool) == size:
            yield pool
            pool = []
    if pool:
        yield pool


def qa_logits(model, windows: Iterable[dict], batch_size: int = 64, device: str = "cpu",
              progress: Optional[Callable[[int], None]] = None, pool_batches: int = POOL_BATCHES):
    """Run ``model`` (a :class:`bertlib.model.BertForQuestionAnswering`) on SQuAD windows.

    Args:
        windows: dicts with ``input_ids``, ``segment_ids``, ``input_mask``: int [S] each (the
            eval OFRecords' fields, or a :class:`bertlib.squad.SquadFeature`'s as a dict), all of
            the same ``S``; the mask is 1 for the window's tokens, then 0 for its padding.
        batch_size: windows per forward pass.
        progress: called with the number of windows done after each batch.

    Returns:
        ``(start_logits, end_logits)``, float32 [N, S] each, in the order of ``windows``;
        ``-inf`` where ``input_mask`` is 0.
    """
    from ..runtime import import_oneflow

    flow = import_oneflow()
    model = model.to(device)
    model.eval()
    starts, ends, done = [], [], 0
    for pool in _pools(windows, batch_size * pool_batches):
        ids, seg, mask = (np.stack([np.asarray(w[k]) for w in pool]).astype(np.int64)
                          for k in ("input_ids", "segment_ids", "input_mask"))         # [P, S]
        lengths = _lengths(mask)
        # written below: every position before a batch's cut; -inf at every 0 of the mask, which
        # covers all positions from the cut on (a window's length ends after its last 1)
        start = np.empty(ids.shape, np.float32)                                         # [P, S]
        end = np.empty(ids.shape, np.float32)
        order = np.argsort(-lengths, kind="stable")                                    # longest first
        for i in range(0, len(order), batch_size):
            rows = order[i:i + batch_size]
            cut = int(lengths[rows].max())                                               # this batch's S
            with flow.no_grad():
                out = model(*(flow.tensor(a[rows, :cut], device=device) for a in (ids, seg, mask)))
            start[rows, :cut] = out.start_logits.cpu().numpy()                           # [b, cut]
            end[rows, :cut] = out.end_logits.cpu().numpy()
            done += len(rows)
            if progress is not None:
                progress(done)
        padding = mask == 0
        start[padding] = -np.inf
        end[padding] = -np.inf
        starts.append(start)
        ends.append(end)
    if not starts:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(starts), np.concatenate(ends)


def _lengths(mask: np.ndarray) -> np.ndarray:
    """Tokens per window of ``mask`` int [P, S]: one past the last 1 (at least 1).

    Cutting a batch at its longest window keeps every 1 of the mask only if the padding is at the
    end, as bertlib's features (and Google's) put it; a window with a 0 inside is still cut after
    its last 1, and the 0 is masked as before.
    """
    last = mask.shape[1] - np.argmax(mask[:, ::-1] != 0, axis=1)                       # [P]
    return np.where(mask.any(axis=1), last, 1)
