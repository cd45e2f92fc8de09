"""Independent reference for manymodel's fits: scikit-learn, with the feature encoding
re-implemented here from the documented spec semantics (not from manymodel's code).

usage: reference_fit.py SPEC.toml HISTORY.csv EVENTS.jsonl OUT.json
Writes {event_id: prediction}.
"""
import csv
import json
import sys
import tomllib
from datetime import datetime, timezone

import numpy as np
from sklearn.linear_model import LinearRegression, Ridge


def ts_ms(v):
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return int(v)
    s = str(v).strip()
    if s.lstrip("-").isdigit():
        return int(s)
    return int(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000)


def as_bool(v):
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() in ("true", "1")


def main():
    spec_path, hist_path, events_path, out_path = sys.argv[1:5]
    with open(spec_path, "rb") as f:
        spec = tomllib.load(f)
    rows = list(csv.DictReader(open(hist_path, newline="")))
    feats = spec["features"]
    cats = {}
    for f in feats:
        if f["kind"] == "one_hot":
            cats[f["column"]] = f.get("categories") or sorted({r[f["column"]].strip() for r in rows if r[f["column"]].strip()})

    def encode(rec):
        x = []
        for f in feats:
            v = rec[f["column"]]
            k = f["kind"]
            if k == "numeric":
                x.append(float(v))
            elif k == "bool":
                x.append(1.0 if as_bool(v) else 0.0)
            elif k == "one_hot":
                x.extend(1.0 if str(v).strip() == c else 0.0 for c in cats[f["column"]])
            else:
                t = datetime.fromtimestamp(ts_ms(v) / 1000, tz=timezone.utc)
                n, slot = {"hour_of_day": (24, t.hour), "day_of_week": (7, t.weekday()), "month": (12, t.month - 1)}[k]
                x.extend(1.0 if i == slot else 0.0 for i in range(n))
        return x

    pcol, target = spec["partition_column"], spec["target"]
    by_store = {}
    for r in rows:
        by_store.setdefault(r[pcol].strip(), ([], []))
        by_store[r[pcol].strip()][0].append(encode(r))
        by_store[r[pcol].strip()][1].append(float(r[target]))

    def model():
        if spec.get("model", "linear") == "ridge":
            return Ridge(alpha=spec["alpha"])
        return LinearRegression()

    fitted = {}
    for store, (x, y) in by_store.items():
        if len(y) >= spec.get("min_rows", 30):
            fitted[store] = model().fit(np.array(x), np.array(y))
    all_x = [x for xs, _ in by_store.values() for x in xs]
    all_y = [y for _, ys in by_store.values() for y in ys]
    fallback = model().fit(np.array(all_x), np.array(all_y))

    out = {}
    for line in open(events_path):
        ev = json.loads(line)
        m = fitted.get(str(ev[pcol]), fallback)
        out[ev["event_id"]] = float(m.predict(np.array([encode(ev)]))[0])
    json.dump(out, open(out_path, "w"))


if __name__ == "__main__":
    main()
