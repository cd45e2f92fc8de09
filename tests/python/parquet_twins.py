"""Parquet files written by pandas and pyarrow, and their CSV / JSONL twins, for tests/parquet.rs.

  parquet_twins.py history DIR          DIR/history.csv, DIR/history.parquet (pandas defaults),
                                        DIR/history_arrow.parquet (pyarrow: large strings,
                                        dictionaries, INT96 timestamps, zstd, small row groups,
                                        data pages v2), DIR/train.toml
  parquet_twins.py events IN.jsonl OUT.parquet
                                        the events of a JSONL file as typed Parquet columns
  parquet_twins.py read FILE.parquet    prints {"schema": {column: type}, "rows": [...]}

The history has a column of each kind the issue names: ints (nullable int64, uint16, int8 as a
category), floats (float64 with nulls, float32), a nullable bool, strings with nulls and padding,
a category (dictionary) partition column, a timestamp with a time zone other than UTC
(nanoseconds) and a date. The CSV twin holds each value as pandas writes it, with the timestamp
as RFC 3339 text with its offset and the date as midnight UTC.
"""

import json
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SPEC = """partition_column = "store_id"
target = "sales"
model = "linear"
min_rows = 30
[[features]]
column = "price"
kind = "numeric"
[[features]]
column = "qty"
kind = "numeric"
[[features]]
column = "shelf"
kind = "numeric"
[[features]]
column = "discount"
kind = "numeric"
[[features]]
column = "promo"
kind = "bool"
[[features]]
column = "weather"
kind = "one_hot"
[[features]]
column = "aisle"
kind = "one_hot"
[[features]]
column = "ts"
kind = "hour_of_day"
[[features]]
column = "ts"
kind = "day_of_week"
[[features]]
column = "day"
kind = "month"
"""


def history(out):
    rng = np.random.RandomState(18)
    n = 2400
    stores = np.array([f"S{i}" for i in range(1, 7)])
    store = stores[rng.randint(0, len(stores), n)]
    start = pd.Timestamp("2024-01-20T00:00:00Z")
    minutes = rng.randint(0, 80 * 24 * 60, n)
    ts = (start + pd.to_timedelta(minutes, unit="min")).tz_convert("America/New_York")
    # Nanoseconds that RFC 3339 text can carry too.
    ts = ts + pd.to_timedelta(rng.randint(0, 10**9, n), unit="ns")
    price = np.round(rng.uniform(1, 9, n), 2)
    price[rng.rand(n) < 0.02] = np.nan
    qty = pd.array(rng.randint(-5, 50, n), dtype="Int64")
    qty[rng.rand(n) < 0.02] = pd.NA
    shelf = rng.randint(0, 60000, n).astype(np.uint16)
    discount = rng.uniform(0, 0.5, n).astype(np.float32)
    promo = pd.array(rng.rand(n) < 0.3, dtype="boolean")
    promo[rng.rand(n) < 0.02] = pd.NA
    weather = rng.choice(["sunny", "rainy", "cloudy", " sunny "], n, p=[0.4, 0.3, 0.28, 0.02])
    weather = pd.array(weather, dtype=object)
    weather[rng.rand(n) < 0.02] = None
    aisle = rng.randint(1, 5, n).astype(np.int8)
    day = ts.tz_convert("UTC").normalize() - pd.to_timedelta(rng.randint(0, 90, n), unit="D")
    days = [d.date() for d in day]
    hour = ts.tz_convert("UTC").hour.to_numpy()
    sales = (
        50
        + 3 * np.nan_to_num(price)
        + 0.5 * np.array(qty.fillna(0), dtype=float)
        + 0.0001 * shelf
        - 20 * discount
        + 10 * np.array(promo.fillna(False), dtype=float)
        + 2 * aisle
        + 8 * np.sin(hour / 24 * 2 * np.pi)
        + rng.normal(0, 2, n)
    )
    sales[rng.rand(n) < 0.01] = np.nan
    df = pd.DataFrame(
        {
            "store_id": pd.Categorical(store),
            "ts": ts,
            "day": days,
            "price": price,
            "qty": qty,
            "shelf": shelf,
            "discount": discount,
            "promo": promo,
            "weather": weather,
            "aisle": aisle,
            "sales": sales,
        }
    )
    df.to_parquet(f"{out}/history.parquet")

    schema = pa.schema(
        [
            ("store_id", pa.large_string()),
            ("ts", pa.timestamp("ns", tz="America/New_York")),
            ("day", pa.date32()),
            ("price", pa.float64()),
            ("qty", pa.int64()),
            ("shelf", pa.uint16()),
            ("discount", pa.float32()),
            ("promo", pa.bool_()),
            ("weather", pa.dictionary(pa.int32(), pa.string())),
            ("aisle", pa.int8()),
            ("sales", pa.float64()),
        ]
    )
    table = pa.Table.from_pandas(df.assign(store_id=df.store_id.astype(str)), schema=schema,
                                 preserve_index=False)
    pq.write_table(
        table,
        f"{out}/history_arrow.parquet",
        compression="zstd",
        row_group_size=250,
        data_page_version="2.0",
        use_deprecated_int96_timestamps=True,
    )

    csv = df.assign(
        ts=[t.isoformat() for t in df.ts],
        day=[f"{d.isoformat()}T00:00:00Z" for d in df.day],
    )
    csv.to_csv(f"{out}/history.csv", index=False)
    with open(f"{out}/train.toml", "w") as f:
        f.write(SPEC)


def events(src, dst):
    rows = [json.loads(line) for line in open(src) if line.strip()]
    table = pa.table(
        {
            "event_id": pa.array([r.get("event_id") for r in rows], pa.string()),
            "store_id": pa.array([r.get("store_id") for r in rows], pa.string()),
            "price": pa.array([r.get("price") for r in rows], pa.float64()),
            "promo": pa.array([r.get("promo") for r in rows], pa.bool_()),
            "temperature": pa.array([r.get("temperature") for r in rows], pa.float64()),
            "weather": pa.array([r.get("weather") for r in rows], pa.string()).dictionary_encode(),
            "ts": pa.array(
                [None if r.get("ts") is None else pd.Timestamp(r["ts"]) for r in rows],
                pa.timestamp("ms", tz="UTC"),
            ),
        }
    )
    pq.write_table(table, dst)


def read(path):
    table = pq.read_table(path)
    print(
        json.dumps(
            {
                "schema": {f.name: str(f.type) for f in table.schema},
                "nullable": {f.name: f.nullable for f in table.schema},
                "rows": table.to_pylist(),
            }
        )
    )


if __name__ == "__main__":
    if sys.argv[1] == "history":
        history(sys.argv[2])
    elif sys.argv[1] == "events":
        events(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "read":
        read(sys.argv[2])
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")
