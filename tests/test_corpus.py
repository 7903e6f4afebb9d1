"""Reading text into documents of sentences: formats, the sentence splitter, bad input."""
import pytest

from bertlib.corpus import (CorpusError, detect_format, find_text_files, parse_documents, read_corpus,
                            read_text, split_sentences)

from bertlib.datasets import find_data

DATA = find_data()  # full-size when found, else the samples shipped with bertlib


def test_sentence_splitter():
    text = ('Mr. Smith met Dr. Who at 5 p.m. on Baker St. in London. "Really?" she asked. '
            "J. R. R. Tolkien wrote it, e.g. in 1937. (It sold well.) Then 1990 came! the end")
    assert split_sentences(text) == [
        "Mr. Smith met Dr. Who at 5 p.m. on Baker St. in London.", '"Really?" she asked.',
        "J. R. R. Tolkien wrote it, e.g. in 1937.", "(It sold well.)", "Then 1990 came! the end"]
    assert split_sentences("  \n ") == []


def test_sentences_format_keeps_lines_and_blank_line_documents():
    docs = parse_documents("First one.\nSecond one\n\n\nOther doc.\n", "sentences", "x")
    assert [d.sentences for d in docs] == [["First one.", "Second one"], ["Other doc."]]


def test_paragraphs_format_joins_wrapped_lines_and_reads_wikitext():
    book = "It was a dark\nnight. The rain fell.\n\nA new paragraph\nbegins here.\n"
    assert detect_format(book) == "paragraphs"
    [doc] = parse_documents(book, "auto", "b")
    assert doc.sentences == ["It was a dark night.", "The rain fell.", "A new paragraph begins here."]
    wiki = (" = Alpha = \n\n The 1 @,@ 000 men were well @-@ known . They left . \n\n"
            " = = History = = \n\n A <unk> came . \n\n = Beta = \n\n Second article here . \n")
    docs = parse_documents(wiki, "auto", "w")
    assert [d.sentences for d in docs] == [
        ["The 1,000 men were well-known .", "They left .", "A [UNK] came ."], ["Second article here ."]]


def test_auto_detects_googles_format():
    assert detect_format("This is one sentence.\nHere is another one!\n\nNew doc starts.\n") == "sentences"


def test_real_corpora_formats():
    [emma] = [book for book in DATA.books if book.name.startswith("austen-emma")]
    assert detect_format(read_text(emma)) == "paragraphs"
    [valid] = [f for f in DATA.wikitext if f.name.startswith("valid")]
    docs = read_corpus(valid)
    # one document per " = Title = " article: ~60 in the full split, 8 in the shipped sample
    assert (50 <= len(docs) <= 70) if DATA.full else len(docs) == 8
    assert all(len(d.sentences) >= 2 for d in docs)


def test_bad_inputs(tmp_path):
    with pytest.raises(CorpusError, match=r"input .*missing\.txt does not exist"):
        find_text_files([tmp_path / "missing.txt"])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CorpusError, match=r"empty_dir contains no \*\.txt files"):
        find_text_files(tmp_path / "empty_dir")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Caf\u00e9 ol\u00e9\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin\.txt: not UTF-8 at byte offset 3 \(line 1, bytes e9"):
        read_text(latin)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n\t\n")
    with pytest.raises(CorpusError, match="the corpus is empty"):
        read_corpus([blank])
