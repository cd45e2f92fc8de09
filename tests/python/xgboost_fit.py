"""Independent reference for `manymodel import`: train one XGBoost regressor per store the way
a many-model notebook does (one-hot weekday and hour columns named WEEKDAY_d and HOUR_h,
min 100 rows per store, a fallback on all rows), save them with save_model, write the import
manifest, and record XGBoost's own predictions for held-out events in which some feature
values are missing (null or absent), as NaN.

The feature encoding is re-implemented here from the documented spec semantics, not from
manymodel's code.

usage: xgboost_fit.py HISTORY.csv EVENTS.jsonl OUT_DIR OBJECTIVE [OBJECTIVE...]
For each objective writes OUT_DIR/<name>/manifest.toml, models/, events.jsonl (with missing
values) and theirs.json ({event_id: prediction}).
"""
import csv
import json
import os
import sys
from datetime import datetime, timezone

import numpy as np
import xgboost as xgb

NUMERIC = ["price", "temperature"]
NAMES = NUMERIC + ["promo"] + [f"WEEKDAY_{d}" for d in range(7)] + [f"HOUR_{h}" for h in range(24)]
MIN_ROWS = 100


def ts_parts(v):
    if isinstance(v, (int, float)):
        t = datetime.fromtimestamp(v / 1000, tz=timezone.utc)
    else:
        t = datetime.fromisoformat(str(v).replace("Z", "+00:00")).astimezone(timezone.utc)
    return t.weekday(), t.hour


def number(v):
    if v is None or (isinstance(v, str) and v.strip() == ""):
        return np.nan
    return float(v)


def encode(rec):
    x = [number(rec.get(c)) for c in NUMERIC]
    p = rec.get("promo")
    x.append(np.nan if p is None or p == "" else (1.0 if str(p).lower() in ("1", "true") else 0.0))
    wd, hour = ts_parts(rec["ts"])
    x.extend(1.0 if d == wd else 0.0 for d in range(7))
    x.extend(1.0 if h == hour else 0.0 for h in range(24))
    return x


def main():
    hist_path, events_path, out_dir = sys.argv[1:4]
    objectives = sys.argv[4:]
    rows = list(csv.DictReader(open(hist_path, newline="")))
    rng = np.random.default_rng(7)
    # Some history values are missing too, so the trees learn default directions.
    for r in rows:
        if rng.random() < 0.08:
            r["price"] = ""
        if rng.random() < 0.05:
            r["temperature"] = ""
    by_store = {}
    for r in rows:
        xs, ys = by_store.setdefault(r["store_id"], ([], []))
        xs.append(encode(r))
        ys.append(max(float(r["sales"]), 0.0))

    events = [json.loads(line) for line in open(events_path) if line.strip()]
    # Held-out events with missing values: null, absent, or both features gone.
    for i, ev in enumerate(events):
        if i % 5 == 1:
            ev["price"] = None
        if i % 7 == 2:
            ev.pop("temperature", None)
        if i % 11 == 3:
            ev["price"] = None
            ev["promo"] = None

    for objective in objectives:
        name = objective.replace(":", "_")
        base = os.path.join(out_dir, name)
        os.makedirs(os.path.join(base, "models"), exist_ok=True)

        def fit(x, y, early_stopping, dart=False):
            params = dict(n_estimators=40, max_depth=4, learning_rate=0.2, objective=objective)
            if dart:
                params.update(booster="dart", rate_drop=0.2, seed=1)
            x, y = np.array(x), np.array(y)
            if early_stopping:
                m = xgb.XGBRegressor(early_stopping_rounds=3, **params)
                cut = int(len(y) * 0.8)
                m.fit(x[:cut], y[:cut], eval_set=[(x[cut:], y[cut:])], verbose=False)
            else:
                m = xgb.XGBRegressor(**params).fit(x, y)
            m.get_booster().feature_names = NAMES
            return m

        fitted = {}
        partitions = []
        for k, store in enumerate(sorted(by_store)):
            x, y = by_store[store]
            if len(y) < MIN_ROWS:
                continue
            m = fit(
                x,
                y,
                early_stopping=(objective == "reg:squarederror" and k % 2 == 0),
                dart=(objective == "reg:tweedie" and k % 3 == 0),
            )
            # Half the stores in XGBoost's binary format, to cover both readers.
            ext = "ubj" if k % 2 == 1 else "json"
            m.save_model(os.path.join(base, "models", f"{store}.{ext}"))
            fitted[store] = m
            partitions.append(f'{store} = "models/{store}.{ext}"')
        all_x = [x for xs, _ in by_store.values() for x in xs]
        all_y = [y for _, ys in by_store.values() for y in ys]
        fallback = fit(all_x, all_y, early_stopping=False)
        fallback.save_model(os.path.join(base, "models", "fallback.json"))

        with open(os.path.join(base, "manifest.toml"), "w") as f:
            f.write(f"""# XGBoost {objective} per store, trained by tests/python/xgboost_fit.py
partition_column = "store_id"
target = "sales"
min_rows = {MIN_ROWS}

[[features]]
column = "price"
kind = "numeric"

[[features]]
column = "temperature"
kind = "numeric"

[[features]]
column = "promo"
kind = "bool"

[[features]]
column = "ts"
kind = "day_of_week"

[[features]]
column = "ts"
kind = "hour_of_day"

[feature_names]
"WEEKDAY_{{}}" = "ts.day_of_week={{}}"
"HOUR_{{}}" = "ts.hour_of_day={{}}"

[fallback]
file = "models/fallback.json"
rows = {len(all_y)}

[partitions]
""")
            f.write("\n".join(partitions) + "\n")

        theirs = {}
        with open(os.path.join(base, "events.jsonl"), "w") as f:
            for ev in events:
                f.write(json.dumps(ev) + "\n")
                m = fitted.get(str(ev["store_id"]), fallback)
                theirs[ev["event_id"]] = float(m.predict(np.array([encode(ev)]))[0])
        json.dump(theirs, open(os.path.join(base, "theirs.json"), "w"))
        print(f"{objective}: {len(fitted)} store models, {len(theirs)} predictions", file=sys.stderr)


if __name__ == "__main__":
    main()
