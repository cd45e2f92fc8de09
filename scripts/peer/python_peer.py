"""The Python peer of `manymodel serve`: what a team would write instead of manymodel, for the
throughput comparison of scripts/bench-python-peer.

It fits one ordinary least-squares model per store with numpy (plus a global fallback) from the
history file, with the feature encoding of the training spec, then consumes the input topic with
confluent-kafka, scores each event with its store's model, produces the prediction keyed by store,
and commits offsets only after the predictions before them were delivered (at-least-once, as
manymodel). It stops after --events predictions.

usage: python_peer.py --brokers B --input T --output T --group G --spec train.toml
                      --history history.csv --events N
"""
import argparse
import csv
import json
import sys
import time
import tomllib
from datetime import datetime, timezone

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition


def ts_ms(v):
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return int(v)
    s = str(v).strip()
    if s.lstrip("-").isdigit():
        return int(s)
    return int(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000)


def encoder(spec, rows):
    feats = spec["features"]
    cats = {}
    for f in feats:
        if f["kind"] == "one_hot":
            cats[f["column"]] = f.get("categories") or sorted(
                {r[f["column"]].strip() for r in rows if r[f["column"]].strip()})

    def encode(rec):
        x = [1.0]
        for f in feats:
            v = rec[f["column"]]
            k = f["kind"]
            if k == "numeric":
                x.append(float(v))
            elif k == "bool":
                x.append(1.0 if str(v).strip().lower() in ("true", "1") else 0.0)
            elif k == "one_hot":
                x.extend(1.0 if str(v).strip() == c else 0.0 for c in cats[f["column"]])
            else:
                t = datetime.fromtimestamp(ts_ms(v) / 1000, tz=timezone.utc)
                n, slot = {"hour_of_day": (24, t.hour), "day_of_week": (7, t.weekday()),
                           "month": (12, t.month - 1)}[k]
                x.extend(1.0 if i == slot else 0.0 for i in range(n))
        return x

    return encode


def fit(spec, history):
    rows = list(csv.DictReader(open(history, newline="")))
    encode = encoder(spec, rows)
    pcol, target = spec["partition_column"], spec["target"]
    by_store = {}
    for r in rows:
        xs, ys = by_store.setdefault(r[pcol].strip(), ([], []))
        xs.append(encode(r))
        ys.append(float(r[target]))
    models = {}
    for store, (xs, ys) in by_store.items():
        if len(ys) >= spec.get("min_rows", 30):
            models[store] = np.linalg.lstsq(np.array(xs), np.array(ys), rcond=None)[0]
    all_x = np.array([x for xs, _ in by_store.values() for x in xs])
    all_y = np.array([y for _, ys in by_store.values() for y in ys])
    fallback = np.linalg.lstsq(all_x, all_y, rcond=None)[0]
    return encode, models, fallback


def main():
    a = argparse.ArgumentParser()
    for flag in ("brokers", "input", "output", "group", "spec", "history"):
        a.add_argument("--" + flag, required=True)
    a.add_argument("--events", type=int, required=True)
    args = a.parse_args()
    with open(args.spec, "rb") as f:
        spec = tomllib.load(f)
    encode, models, fallback = fit(spec, args.history)
    pcol = spec["partition_column"]

    consumer = Consumer({
        "bootstrap.servers": args.brokers, "group.id": args.group,
        "enable.auto.commit": False, "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest", "fetch.wait.max.ms": 20,
    })
    producer = Producer({"bootstrap.servers": args.brokers, "linger.ms": 5,
                         "queue.buffering.max.messages": 500000})
    # Per Kafka partition: offsets read in order, and which of them are delivered.
    pending = {}
    delivered = set()
    done = [0]

    def on_delivery(err, msg, key=None):
        if err is None:
            delivered.add(key)
            done[0] += 1

    def commit():
        offsets = []
        for p, queue in pending.items():
            last = None
            while queue and (p, queue[0]) in delivered:
                delivered.discard((p, queue[0]))
                last = queue.pop(0)
            if last is not None:
                offsets.append(TopicPartition(args.input, p, last + 1))
        if offsets:
            consumer.commit(offsets=offsets, asynchronous=True)

    consumer.subscribe([args.input])
    last_commit = time.monotonic()
    while done[0] < args.events:
        for m in consumer.consume(num_messages=1000, timeout=0.05):
            if m.error():
                continue
            p, o = m.partition(), m.offset()
            ev = json.loads(m.value())
            store = str(ev[pcol])
            beta = models.get(store, fallback)
            y = float(np.dot(beta, encode(ev)))
            out = json.dumps({"event_id": ev.get("event_id"), "partition": store,
                              "prediction": y}).encode()
            pending.setdefault(p, []).append(o)
            while True:
                try:
                    producer.produce(args.output, out, store.encode(),
                                     on_delivery=lambda e, msg, k=(p, o): on_delivery(e, msg, k))
                    break
                except BufferError:
                    producer.poll(0.005)
            producer.poll(0)
        producer.poll(0)
        if time.monotonic() - last_commit > 1.0:
            commit()
            last_commit = time.monotonic()
    producer.flush(30)
    commit()
    consumer.close()
    print(f"python peer: {done[0]} predictions delivered", file=sys.stderr)


if __name__ == "__main__":
    main()
