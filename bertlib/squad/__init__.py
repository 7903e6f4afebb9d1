"""SQuAD v1.1: examples, features, OFRecords, post-processing and official scoring.

The path of a question through this package::

    read_squad_examples(json)            -> SquadExample per question (words, answer word span)
    convert_examples_to_features(...)    -> SquadFeature per doc-stride window (token ids, maps)
    write_squad_ofrecords(...)           -> OFRecord shards + squad_features.json manifest
    ... the model produces start/end logits per feature (unique_id) ...
    postprocess_predictions(...)         -> {qid: answer text}, n-best lists, predictions.json
    evaluate(dataset, predictions)       -> {"exact_match": .., "f1": ..} (official v1.1 rules)
"""
from .answer import Answer, QAError, QuestionAnswerer, answer
from .evaluate import SquadEvalError, evaluate, exact_match_score, f1_score, normalize_answer
from .examples import SquadDataError, SquadExample, read_squad_examples
from .features import (
    FIRST_UNIQUE_ID,
    MANIFEST_NAME,
    SquadFeature,
    check_vocab_case,
    convert_examples_to_features,
    feature_to_record,
    load_eval_features,
    make_squad_data,
    squad_eval_schema,
    squad_train_schema,
    write_squad_ofrecords,
)
from .postprocess import RawResult, get_final_text, postprocess_predictions, write_predictions

__all__ = [
    "Answer",
    "FIRST_UNIQUE_ID",
    "MANIFEST_NAME",
    "QAError",
    "QuestionAnswerer",
    "RawResult",
    "SquadDataError",
    "SquadEvalError",
    "SquadExample",
    "SquadFeature",
    "answer",
    "check_vocab_case",
    "convert_examples_to_features",
    "evaluate",
    "exact_match_score",
    "f1_score",
    "feature_to_record",
    "get_final_text",
    "load_eval_features",
    "make_squad_data",
    "normalize_answer",
    "postprocess_predictions",
    "read_squad_examples",
    "squad_eval_schema",
    "squad_train_schema",
    "write_predictions",
    "write_squad_ofrecords",
]
