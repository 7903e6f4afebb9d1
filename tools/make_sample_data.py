"""Cut the small real data that ships inside bertlib (``bertlib/sample_data/``) from the full-size data.

Run once by a maintainer, from the repository root, with the full-size data at hand::

    python tools/make_sample_data.py --full_data_dir ../shared/data

It writes only what a bare clone needs to run every test and notebook (well under 2 MB): a few
SQuAD v1.1 articles, the opening articles of WikiText-2's validation split, the first chapters or
acts of three Project Gutenberg books and the bert-base-uncased vocabulary. The cuts are fixed by
name and count below, so re-running it gives the same bytes; ``SOURCES.md`` beside the samples
records where each came from, its licence and the sha256 of the full file it was cut from.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "bertlib" / "sample_data"

# SQuAD: whole articles, chosen small and on different subjects.
SQUAD_TRAIN = ("Montana", "Genocide", "Antibiotics")
SQUAD_DEV = ("Normans", "Sky_(United_Kingdom)")
WIKITEXT_ARTICLES = 8          # the first articles of valid.txt (each starts with a " = Title = " line)
# Gutenberg: the text up to (not including) this line, i.e. the opening chapters or act.
GUTENBERG = {
    "austen-emma.txt": "CHAPTER IV",
    "shakespeare-caesar.txt": "Actus Secundus.",
    "blake-poems.txt": None,   # the whole book is 38 kB
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cut_squad(source: Path, titles: tuple[str, ...], target: Path) -> dict:
    data = json.loads(source.read_text(encoding="utf-8"))
    by_title = {article["title"]: article for article in data["data"]}
    missing = [t for t in titles if t not in by_title]
    if missing:
        raise SystemExit(f"{source}: no article titled {', '.join(missing)}")
    subset = {"data": [by_title[t] for t in titles], "version": data["version"]}
    target.write_text(json.dumps(subset), encoding="utf-8")
    questions = sum(len(p["qas"]) for t in titles for p in by_title[t]["paragraphs"])
    return {"articles": list(titles), "questions": questions}


def cut_wikitext(source: Path, articles: int, target: Path) -> int:
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if re.match(r"^ = [^=].* = $", line.rstrip("\n"))]
    end = starts[articles] if len(starts) > articles else len(lines)
    target.write_text("".join(lines[:end]), encoding="utf-8")
    return end


def cut_book(source: Path, stop: str | None, target: Path) -> int:
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    end = next((i for i, line in enumerate(lines) if line.strip() == stop), len(lines)) if stop else len(lines)
    target.write_text("".join(lines[:end]).rstrip() + "\n", encoding="utf-8")
    return end


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full_data_dir", type=Path, required=True,
                        help="folder with squad/, bert/vocab.txt and corpus/ (the full-size layout)")
    args = parser.parse_args(argv)
    full = args.full_data_dir
    for sub in ("squad", "bert", "corpus/wikitext-2", "corpus/gutenberg"):
        (OUT / sub).mkdir(parents=True, exist_ok=True)

    report = {}
    train_src, dev_src = full / "squad/train-v1.1-first44articles.json", full / "squad/dev-v1.1.json"
    report["train"] = cut_squad(train_src, SQUAD_TRAIN, OUT / "squad/train-v1.1-sample.json")
    report["dev"] = cut_squad(dev_src, SQUAD_DEV, OUT / "squad/dev-v1.1-sample.json")
    wiki_src = full / "corpus/wikitext-2/valid.txt"
    report["wikitext_lines"] = cut_wikitext(wiki_src, WIKITEXT_ARTICLES, OUT / "corpus/wikitext-2/valid-sample.txt")
    for name, stop in GUTENBERG.items():
        report[name] = cut_book(full / "corpus/gutenberg" / name, stop,
                                OUT / "corpus/gutenberg" / name.replace(".txt", "-sample.txt"))
    shutil.copyfile(full / "bert/vocab.txt", OUT / "bert/vocab.txt")

    sources = {p.relative_to(full).as_posix(): sha256(p) for p in
               [train_src, dev_src, wiki_src, full / "bert/vocab.txt",
                *(full / "corpus/gutenberg" / n for n in GUTENBERG)]}
    print(json.dumps({"cut": report, "source sha256": sources}, indent=1))
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{OUT}: {total / 1e6:.2f} MB in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
