"""SQuAD OFRecords on disk: make them from a JSON file (or reuse them), subset a JSON file, check them.

No OneFlow here: the SQuAD task calls these before any process starts, so bad input is a clear
error (exit code 2 from ``bert-squad``), not a crashed rank.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..loaders import count_parts
from ..ofrecord import DataError
from ..schemas import squad_schema
from .examples import SquadDataError
from .features import MANIFEST_NAME, sha256_file

__all__ = ["subset_squad_json", "build_squad_data", "check_squad_data"]


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
    from ..tokenization import load_tokenizer
    from .features import make_squad_data

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
    # every record in full, labels included: an out-of-range label gives a finite, wrong loss
    summary = squad_schema(max_seq_length, is_training).validate(data_dir, parts, num_ranks=num_ranks,
                                                                 vocab_size=vocab_size)
    if manifest is not None and manifest.get("num_features") not in (None, summary.num_records):
        raise SquadDataError(f"{data_dir}: the manifest counts {manifest['num_features']} features but "
                             f"the parts hold {summary.num_records} records")
    return {"num_records": summary.num_records, "data_part_num": parts,
            "records_per_rank": summary.records_per_rank, "manifest": manifest}
