"""WordPiece through `tokenizers`: the bert-base-uncased vocab, the fast path, training a vocab."""
import pytest

from bertlib.tokenization import (SPECIAL_TOKENS, VocabError, encode_ids, load_tokenizer, read_vocab,
                                  special_token_ids, train_vocab)

from bertlib.datasets import find_data

VOCAB = find_data().vocab  # bert-base-uncased, shipped with bertlib (or the full-size data's copy)


def test_bert_base_uncased_pieces_and_ids():
    tok = load_tokenizer(VOCAB)
    enc = tok.encode("Tokenization of Café — unaffable!", add_special_tokens=False)
    assert enc.tokens == ["token", "##ization", "of", "cafe", "—", "una", "##ffa", "##ble", "!"]
    assert tok.encode("hello world").tokens == ["[CLS]", "hello", "world", "[SEP]"]
    assert special_token_ids(read_vocab(VOCAB)) == {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102,
                                                   "[MASK]": 103}


def test_encode_ids_fast_path_is_exact():
    tok = load_tokenizer(VOCAB)
    texts = ["Plain ASCII text, with Punctuation.", "tabs\tand\x0bcontrol\x01chars", "",
             "literal [UNK] and [unk] and [MASK][mask] and <unk>", "caf\u00e9 na\u00efve \u4e2d\u6587",
             "John [UNK] met Mr. O'Neil in 1990 ...", "   spaces   everywhere  "]
    expected = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    assert encode_ids(tok, texts) == expected


def test_missing_vocab_says_where_to_get_one(tmp_path):
    with pytest.raises(VocabError, match=r"vocab file .*nothing\.txt not found.*bert-train-vocab.*bert-base-uncased"):
        load_tokenizer(tmp_path / "nothing.txt")
    bad = tmp_path / "vocab.txt"
    bad.write_text("a\nb\n[UNK]\n")
    with pytest.raises(VocabError, match=r"lacks the special tokens \[PAD\] \[CLS\] \[SEP\] \[MASK\]"):
        read_vocab(bad)


def test_train_vocab(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(
        f"The quick brown fox number {i} jumps over the lazy dog.\nTokenizers learn pieces of words."
        for i in range(200)), encoding="utf-8")
    path = train_vocab([corpus], 200, tmp_path / "out")
    vocab = read_vocab(path)
    assert path == tmp_path / "out" / "vocab.txt"
    assert tuple(vocab[:5]) == SPECIAL_TOKENS
    assert len(vocab) == len(set(vocab)) <= 200
    assert any(t.startswith("##") for t in vocab)
    tokens = load_tokenizer(path).encode("The quick fox", add_special_tokens=False).tokens
    assert tokens == ["the", "quick", "fox"]
