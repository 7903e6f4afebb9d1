"""OFRecord format: encoding against OneFlow's own protobuf and reader, sharding, validation errors."""
import struct

import numpy as np
import pytest

from bertlib.ofrecord import (DataError, OFRecordWriter, Schema, decode_record, encode_packed_entry,
                              encode_record, encode_varints, explain_record, iter_records, part_paths, rank_part_ranges,
                              read_records, validate_data_dir, write_shards)


@pytest.fixture(scope="module")
def flow():
    from bertlib.runtime import import_oneflow
    return import_oneflow()


@pytest.fixture(scope="module")
def record_pb2(flow):
    from oneflow.core.record import record_pb2
    return record_pb2


def sample(i: int) -> dict:
    rng = np.random.default_rng(i)
    return {
        "i32": np.array([i, -i, 2**31 - 1, -2**31, 127, 128, 16383, 16384], np.int32),
        "i64": np.array([i, -(2**40) - i, 2**62], np.int64),
        "f32": rng.standard_normal(5).astype(np.float32),
        "f64": rng.standard_normal(3),
        "ids": rng.integers(0, 30522, 16).astype(np.int32),
    }


def test_round_trip_all_list_types():
    features = {**sample(3), "raw": [b"ab", b"", bytes(range(256))], "text": "caf\u00e9",
                "empty": np.zeros(0, np.int32), "matrix": np.arange(6, dtype=np.int32).reshape(2, 3),
                "small": np.array([1, 0], np.uint8), "pyints": [1, 2, 3]}
    out = decode_record(encode_record(features))
    for name in sample(3):
        assert out[name].dtype == features[name].dtype
        np.testing.assert_array_equal(out[name], features[name])
    assert out["raw"] == [b"ab", b"", bytes(range(256))]
    assert out["text"] == ["caf\u00e9".encode()]
    assert out["empty"].dtype == np.int32 and out["empty"].size == 0
    np.testing.assert_array_equal(out["matrix"], np.arange(6))  # flattened in C order
    assert out["small"].dtype == np.int32 and out["pyints"].dtype == np.int64


def test_bad_inputs_to_the_encoder():
    with pytest.raises(DataError, match="at least one feature"):
        encode_record({})
    with pytest.raises(TypeError, match="'c'.*complex"):
        encode_record({"c": np.zeros(2, np.complex64)})


@pytest.mark.parametrize("kind", ["int32", "int64", "float32", "float64", "bytes"])
def test_bytes_equal_protobufs_serialization(record_pb2, kind):
    """One feature per record, so protobuf's map order cannot differ: the bytes must be identical."""
    values = {"int32": np.array([0, 5, 300, -7, 2**31 - 1], np.int32), "int64": np.array([-1, 2**50], np.int64),
              "float32": np.array([1.5, -2.25], np.float32), "float64": np.array([3.125]),
              "bytes": [b"x", b"yz"]}[kind]
    ref = record_pb2.OFRecord()
    feature = ref.feature["f"]
    target = {"int32": feature.int32_list, "int64": feature.int64_list, "float32": feature.float_list,
              "float64": feature.double_list, "bytes": feature.bytes_list}[kind]
    target.value.extend(values if kind == "bytes" else values.tolist())
    assert encode_record({"f": values}) == ref.SerializeToString()


def test_records_built_by_oneflows_protobuf_read_back(tmp_path, record_pb2):
    path = tmp_path / "part-0"
    expected = []
    with open(path, "wb") as f:
        for i in range(5):
            rec = record_pb2.OFRecord()
            rec.feature["input_ids"].int32_list.value.extend([101, i, 102])
            rec.feature["weights"].float_list.value.extend([0.5 * i])
            rec.feature["uid"].int64_list.value.append(1_000_000_000 + i)
            rec.feature["name"].bytes_list.value.append(f"q{i}".encode())
            payload = rec.SerializeToString()
            f.write(struct.pack("<q", len(payload)) + payload)
            expected.append(i)
    got = list(iter_records(path))
    assert [r["input_ids"].tolist() for r in got] == [[101, i, 102] for i in expected]
    assert [r["uid"][0] for r in got] == [1_000_000_000 + i for i in expected]
    assert [r["name"] for r in got] == [[f"q{i}".encode()] for i in expected]
    assert got[3]["weights"].dtype == np.float32 and got[3]["weights"][0] == 1.5


def test_unpacked_and_unknown_fields_are_accepted():
    """proto2 parsers accept repeated scalars unpacked; other writers may produce them."""
    int32_list = b"\x08\x05\x08\x96\x01"             # value=5, value=150, one tag each
    feature = b"\x22" + bytes([len(int32_list)]) + int32_list
    feature += b"\x38\x01"                            # unknown field 7 (varint): ignored
    entry = b"\x0a\x01a" + b"\x12" + bytes([len(feature)]) + feature
    out = decode_record(b"\x0a" + bytes([len(entry)]) + entry)
    np.testing.assert_array_equal(out["a"], [5, 150])


def test_fast_entry_encoder_matches_encode_record():
    ids = np.array([101, 7592, 2088, 102], np.int32)
    fast = encode_packed_entry("ids", "int32_list", encode_varints(ids)) + \
        encode_packed_entry("w", "float_list", np.ones(3, np.float32).tobytes())
    assert fast == encode_record({"ids": ids, "w": np.ones(3, np.float32)})
    assert encode_packed_entry("e", "int32_list", b"") == encode_record({"e": np.zeros(0, np.int32)})


def test_explain_record_labels_every_byte_once():
    payload = encode_record({"input_ids": np.array([101, 7592, 102], np.int32), "w": np.ones(2, np.float32),
                             "s": [b"hi", b""], "e": np.zeros(0, np.int64)})
    rows = explain_record(payload)
    assert "".join(h.replace(" ", "") for _, h, _ in rows) == (struct.pack("<q", len(payload)) + payload).hex()
    offsets = [o for o, _, _ in rows]
    assert offsets == sorted(offsets) and rows[0][2] == f"record length = {len(payload)} (int64, little-endian)"
    assert any("values (varints) = [101, 7592, 102]" in m for _, _, m in rows)


def test_writer_framing(tmp_path):
    path = tmp_path / "f"
    with OFRecordWriter(path) as w:
        w.write({"a": np.array([1], np.int32)})
        w.write(encode_record({"a": np.array([2], np.int32)}))  # pre-encoded payloads too
    data = path.read_bytes()
    (n,) = struct.unpack_from("<q", data, 0)
    assert data[8:8 + n] == encode_record({"a": np.array([1], np.int32)})
    assert [r["a"][0] for r in iter_records(path)] == [1, 2]


def test_shards_names_and_round_robin(tmp_path):
    records = [{"i": np.array([i], np.int64)} for i in range(10)]
    paths = write_shards(records, tmp_path / "d", 3)
    assert [p.name for p in paths] == ["part-0", "part-1", "part-2"]
    assert [[int(r["i"][0]) for r in iter_records(p)] for p in paths] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert not list((tmp_path / "d").glob("*.tmp"))
    padded = write_shards(records, tmp_path / "z", 2, prefix="shard_", suffix_length=5)
    assert [p.name for p in padded] == ["shard_00000", "shard_00001"]
    assert part_paths(tmp_path, 12, suffix_length=None)[11].name == "part-11"
    assert sorted(int(r["i"][0]) for r in read_records(padded)) == list(range(10))
    with pytest.raises(DataError, match="only 2 records for 3 parts"):
        write_shards(records[:2], tmp_path / "few", 3)
    assert not list((tmp_path / "few").iterdir())


def test_rank_part_ranges_follow_oneflows_balanced_split():
    assert rank_part_ranges(4, 2) == [range(0, 2), range(2, 4)]
    assert rank_part_ranges(5, 2) == [range(0, 3), range(3, 5)]
    assert rank_part_ranges(3, 3) == [range(0, 1), range(1, 2), range(2, 3)]
    with pytest.raises(DataError):
        rank_part_ranges(2, 3)


def test_oneflow_reader_reads_our_files(tmp_path, flow):
    """Writer -> OneFlow's OFRecordReader + OFRecordRawDecoder gives back the same arrays."""
    records = [sample(i) for i in range(6)]
    write_shards(records, tmp_path, 2, suffix_length=5)
    order = [records[i] for i in (0, 2, 4, 1, 3, 5)]  # part-00000, then part-00001
    reader = flow.nn.OFRecordReader(str(tmp_path), batch_size=6, data_part_num=2, part_name_suffix_length=5,
                                    random_shuffle=False, shuffle_after_epoch=False)
    batch = reader()
    for name, dtype in [("i32", flow.int32), ("i64", flow.int64), ("f32", flow.float32),
                        ("f64", flow.float64), ("ids", flow.int64)]:
        n = order[0][name].size
        got = flow.nn.OFRecordRawDecoder(name, [n], dtype=dtype)(batch).numpy()
        np.testing.assert_array_equal(got, np.stack([r[name] for r in order]).astype(got.dtype))


# ------------------------------------------------------------------------------------------ validator

SCHEMA = Schema({"input_ids": (np.int32, 4), "label": (np.int32, 1), "w": (np.float32, 2)})


def good(i: int) -> dict:
    return {"input_ids": np.array([1, 2, 3, i % 10], np.int32), "label": np.array([i % 2], np.int32),
            "w": np.ones(2, np.float32)}


@pytest.fixture()
def data_dir(tmp_path):
    write_shards([good(i) for i in range(12)], tmp_path / "data", 3)
    return tmp_path / "data"


def test_validator_accepts_good_data(data_dir):
    summary = validate_data_dir(data_dir, SCHEMA, 3, num_ranks=3, vocab_size=10,
                                value_ranges={"label": (0, 2)})
    assert summary.records_per_part == [4, 4, 4] and summary.records_per_rank == [4, 4, 4]
    assert summary.num_records == 12


def replace_part(data_dir, records):
    (data_dir / "part-1").unlink()
    with OFRecordWriter(data_dir / "part-1") as w:
        for r in records:
            w.write(r)


@pytest.mark.parametrize("case, pattern", [
    ("missing_dir", r"data directory .*nope does not exist"),
    ("missing_part", r"missing part file .*part-2 \(data_part_num=3"),
    ("too_few_parts", r"data_part_num=3 but 4 ranks read it"),
    ("empty", r"part-1: the file is empty"),
    ("truncated", r"part-1: record 3 at byte offset \d+: record claims \d+ bytes but only \d+ remain"),
    ("short_header", r"part-1: record 4 at byte offset \d+: truncated length header \(3 trailing bytes"),
    ("garbage", r"part-1: record 0 at byte offset 0: .*(not positive|claims)"),
    ("bad_protobuf", r"part-1: record 1 at byte offset \d+: payload does not parse as an OFRecord"),
    ("missing_feature", r"part-1: record 2 at byte offset \d+: feature 'label' is missing"),
    ("wrong_length", r"part-1: record 0 at byte offset 0: feature 'input_ids' has 5 values, expected 4"),
    ("wrong_kind", r"feature 'label' is a bytes_list"),
    ("id_range", r"part-1: record 1 at byte offset \d+: feature 'input_ids' holds token id 10 at position 3"),
    ("negative_id", r"token id -1 at position 0"),
    ("label_range", r"feature 'label' holds 7 at position 0, outside \[0, 2\)"),
])
def test_validator_names_each_problem(data_dir, case, pattern):
    part1 = data_dir / "part-1"
    ranks, directory = 1, data_dir
    if case == "missing_dir":
        directory = data_dir / "nope"
    elif case == "missing_part":
        (data_dir / "part-2").unlink()
    elif case == "too_few_parts":
        ranks = 4
    elif case == "empty":
        part1.write_bytes(b"")
    elif case == "truncated":
        part1.write_bytes(part1.read_bytes()[:-5])
    elif case == "short_header":
        part1.write_bytes(part1.read_bytes() + b"\x01\x02\x03")
    elif case == "garbage":
        part1.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    elif case == "bad_protobuf":
        with OFRecordWriter(part1) as w:
            w.write(good(0))
            w.write(b"\xff\xff\xff\xff not a protobuf")
    elif case == "missing_feature":
        replace_part(data_dir, [good(0), good(1), {"input_ids": good(2)["input_ids"], "w": good(2)["w"]}])
    elif case == "wrong_length":
        replace_part(data_dir, [{**good(0), "input_ids": np.arange(5, dtype=np.int32)}])
    elif case == "wrong_kind":
        replace_part(data_dir, [{**good(0), "label": [b"1"]}])
    elif case == "id_range":
        replace_part(data_dir, [good(0), {**good(1), "input_ids": np.array([1, 2, 3, 10], np.int32)}])
    elif case == "negative_id":
        replace_part(data_dir, [{**good(0), "input_ids": np.array([-1, 2, 3, 4], np.int32)}])
    elif case == "label_range":
        replace_part(data_dir, [{**good(0), "label": np.array([7], np.int32)}])
    with pytest.raises(DataError, match=pattern) as info:
        validate_data_dir(directory, SCHEMA, 3, num_ranks=ranks, vocab_size=10, value_ranges={"label": (0, 2)})
    assert isinstance(info.value, ValueError)


def test_missing_part_hints_at_zero_padding(tmp_path):
    write_shards([good(i) for i in range(4)], tmp_path, 2, suffix_length=5)
    with pytest.raises(DataError, match="zero-padded names"):
        validate_data_dir(tmp_path, SCHEMA, 2)
    assert validate_data_dir(tmp_path, SCHEMA, 2, suffix_length=5).num_records == 4


def test_validation_can_be_limited_to_some_parts(data_dir):
    replace_part(data_dir, [{**good(0), "label": np.array([7], np.int32)}])
    # part-1 is only framing-checked when the caller decodes parts 0 and 2 (another rank's job).
    summary = validate_data_dir(data_dir, SCHEMA, 3, value_ranges={"label": (0, 2)}, decode_parts=[0, 2])
    assert summary.records_per_part == [4, 1, 4]


def test_decoding_a_sample_of_each_part_still_frames_every_record(data_dir):
    bad_label = {**good(0), "label": np.array([7], np.int32)}
    replace_part(data_dir, [good(0), good(1), bad_label])
    # the third record of part-1 is past the first 2 decoded, so its label is not read...
    summary = validate_data_dir(data_dir, SCHEMA, 3, value_ranges={"label": (0, 2)}, max_records_per_part=2)
    assert summary.records_per_part == [4, 3, 4]
    with pytest.raises(DataError, match=r"part-1: record 2 .*'label' holds 7"):
        validate_data_dir(data_dir, SCHEMA, 3, value_ranges={"label": (0, 2)})
    # ...but a broken frame anywhere is found whatever the sample
    part1 = data_dir / "part-1"
    part1.write_bytes(part1.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"part-1: record 2 at byte offset \d+: record claims"):
        validate_data_dir(data_dir, SCHEMA, 3, max_records_per_part=1)


def test_validation_progress_bar_counts_every_byte(data_dir, capsys):
    validate_data_dir(data_dir, SCHEMA, 3, progress=True)
    err = capsys.readouterr().err
    total = sum(p.stat().st_size for p in data_dir.glob("part-*"))
    assert "checking data: 100%" in err and f"{total}/{total}" in err
    validate_data_dir(data_dir, SCHEMA, 3)
    assert capsys.readouterr().err == ""
