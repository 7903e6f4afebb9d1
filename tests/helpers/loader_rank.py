"""One rank of the loader sharding test: which records does this rank's OFRecordReader see?"""
import json
import sys
from pathlib import Path

import numpy as np

from bertlib.launch import fail_fast


def main(data_dir: str, out_dir: str) -> None:
    from bertlib import runtime
    from bertlib.loaders import OFRecordLoader

    loader = OFRecordLoader(data_dir, batch_size=3, schema={"idx": (np.int64, 1)}, data_part_num=4,
                            shuffle=False, id_features=())
    seen = [int(v) for _ in range(4) for v in loader.next_batch()["idx"].numpy().ravel()]
    Path(out_dir, f"rank{runtime.rank()}.json").write_text(json.dumps(
        {"rank": runtime.rank(), "world": runtime.world_size(), "parts": list(loader.parts),
         "records": loader.num_records, "steps_per_epoch": loader.steps_per_epoch, "seen": seen}))


if __name__ == "__main__":
    fail_fast(main, *sys.argv[1:])
