"""What a run does, callable in-process with a plain options object.

* :mod:`bertlib.tasks.pretraining`: masked LM + next sentence on OFRecord shards;
* :mod:`bertlib.tasks.squad`: SQuAD v1.1 fine-tuning, prediction and scoring.

Each has ``Options`` (a dataclass whose fields are the command-line flags), ``prepare`` (resolve
and validate everything before any process starts), ``run`` (this process: one rank of a job, or
the whole job) and ``launch`` (N local processes through :mod:`bertlib.launch`). The CLIs in
:mod:`bertlib.cli` only turn flags into options and call these.
"""
