"""Tiny Parquet (and matching JSONL) fixtures for rl-data's dataset loaders.

Writes crates/rl-data/tests/fixtures/dataset_*.{parquet,jsonl}, read by
crates/rl-data/tests/dataset.rs. The files are written the way Hugging Face datasets ship
theirs (pyarrow, snappy, dictionary encoding, ARROW:schema metadata), a few KB in all:

* dataset_math.parquet    snappy; `problem` string, `answer` int64 (HF math datasets often store
                          integer answers), metadata `level` int64, `subject` string, `tags`
                          list<string>; two row groups of two rows.
* dataset_math.jsonl      the same rows as JSON lines (the loaders must agree on them).
* dataset_math_zstd.parquet  the same rows, zstd, data page v2 (polars' default codec).
* dataset_math_gzip.parquet  the same rows, gzip.
* dataset_null.parquet    `answer` is null in row 2 (0-based), `level` is null in row 0.
* dataset_types.parquet   one column per type the loader handles: large_string, string_view,
                          dictionary<string>, double, float16, float, decimal128, uint8, binary,
                          bool, date32, struct.
* dataset_brotli.parquet  brotli, a codec the loader does not build (typed error).

Regenerate (only PyPI is needed; the fixtures are committed, CI does not run this):

    python3 -m venv /tmp/pqvenv && /tmp/pqvenv/bin/pip install pyarrow
    /tmp/pqvenv/bin/python scripts/reference/reward_parquet_fixture.py

Written with pyarrow 26.0.1. Parquet output is deterministic for a given pyarrow version except
for the `created_by` string, so a regeneration with another version may change the bytes but not
what the tests read.
"""

import datetime
import decimal
import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq

out = pathlib.Path(__file__).resolve().parents[2] / "crates/rl-data/tests/fixtures"

rows = [
    {"problem": "What is $1 + 1$?", "answer": 2, "level": 1, "subject": "arithmetic",
     "tags": ["easy"]},
    {"problem": "Compute $\\frac{84}{2}$.", "answer": 42, "level": 2, "subject": "algebra",
     "tags": []},
    {"problem": "Let $x - 10 = -17$. Find $x$.", "answer": -7, "level": 3, "subject": "algebra",
     "tags": ["negative", "linear"]},
    {"problem": "Combien font 6 × 7 ? Réponds en français.", "answer": 42, "level": 1,
     "subject": "arithmétique", "tags": ["unicode"]},
]

math_schema = pa.schema([
    ("problem", pa.string()),
    ("answer", pa.int64()),
    ("level", pa.int64()),
    ("subject", pa.string()),
    ("tags", pa.list_(pa.string())),
])

math = pa.Table.from_pylist(rows, schema=math_schema)
pq.write_table(math, out / "dataset_math.parquet", compression="snappy", row_group_size=2)
pq.write_table(math, out / "dataset_math_zstd.parquet", compression="zstd",
               data_page_version="2.0")
pq.write_table(math, out / "dataset_math_gzip.parquet", compression="gzip")
pq.write_table(math, out / "dataset_brotli.parquet", compression="brotli")

with open(out / "dataset_math.jsonl", "w", encoding="utf-8") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")

null_rows = [dict(r) for r in rows]
null_rows[0]["level"] = None
null_rows[2]["answer"] = None
pq.write_table(pa.Table.from_pylist(null_rows, schema=math_schema),
               out / "dataset_null.parquet", compression="snappy")

types = pa.table({
    "question": pa.array(["Half of 4?", "A tenth?"], type=pa.large_string()),
    "view": pa.array(["Half of 4?", "A tenth?"], type=pa.string_view()),
    "cat": pa.array(["Half of 4?", "A tenth?"]).dictionary_encode(),
    "f64": pa.array([2.0, 0.1], type=pa.float64()),
    "f16": pa.array([2.0, 0.5], type=pa.float16()),
    "f32": pa.array([2.0, 0.1], type=pa.float32()),
    "dec": pa.array([decimal.Decimal("1.50"), decimal.Decimal("-2.25")], type=pa.decimal128(5, 2)),
    "u8": pa.array([7, 255], type=pa.uint8()),
    "blob": pa.array([b"\x00\x01", b"hi"], type=pa.binary()),
    "flag": pa.array([True, False], type=pa.bool_()),
    "day": pa.array([datetime.date(2024, 1, 31), datetime.date(1970, 1, 1)], type=pa.date32()),
    "info": pa.array([{"id": 1, "src": "a"}, {"id": 2, "src": None}],
                     type=pa.struct([("id", pa.int32()), ("src", pa.string())])),
})
pq.write_table(types, out / "dataset_types.parquet", compression="snappy")

for p in sorted(out.glob("dataset_*")):
    print(f"{p.name}: {p.stat().st_size} bytes")
