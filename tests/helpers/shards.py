"""Real data and tiny models the CLI, task and graph tests share."""
from bertlib.datasets import find_data


def make_wikitext_shards(out, data_part_num: int):
    """WikiText-2's test split (~2,400 instances), or the shipped sample's 8 articles read 4 times (~900)."""
    from bertlib.pretraining_data import create_pretraining_data

    data = find_data()
    wiki = [f for f in data.wikitext if f.name.startswith("test")] or data.wikitext
    create_pretraining_data(wiki[0], data.vocab, out, dupe_factor=1 if data.full else 4,
                            data_part_num=data_part_num, progress=False)
    return out


def save_tiny_qa_model(path, **config):
    """A randomly initialised 2-layer BertForQuestionAnswering (seed 0) saved in Hugging Face format;
    ``config`` overrides BertConfig.tiny's fields (e.g. dropout)."""
    from bertlib.config import BertConfig
    from bertlib.model import BertForQuestionAnswering
    from bertlib.runtime import import_oneflow

    import_oneflow().manual_seed(0)
    BertForQuestionAnswering(BertConfig.tiny(vocab_size=30522, **config)).save_pretrained(path)
    return path
