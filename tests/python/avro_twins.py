"""Independent Avro encoder for the cross-check: writes the Avro twins of JSON events with
fastavro (not manymodel's code, not apache-avro), in Confluent's wire format and as an object
container file.

usage: avro_twins.py EVENTS.jsonl SCHEMA.avsc SCHEMA_ID OUT_DIR
Writes OUT_DIR/confluent.hex (one framed record per line: magic byte 0, the 4-byte big-endian
schema id, the schemaless datum, in hex) and OUT_DIR/events.avro (deflate codec).
"""
import io
import json
import struct
import sys
from datetime import datetime

import fastavro


def twin(event):
    out = dict(event)
    # timestamp-millis takes a datetime; the JSON events carry RFC 3339 text.
    out["ts"] = datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
    out.setdefault("expected_sales", None)
    return out


def main():
    events_path, schema_path, schema_id, out_dir = sys.argv[1:5]
    with open(schema_path) as f:
        schema = fastavro.parse_schema(json.load(f))
    with open(events_path) as f:
        events = [twin(json.loads(line)) for line in f if line.strip()]
    with open(f"{out_dir}/confluent.hex", "w") as out:
        for e in events:
            buf = io.BytesIO()
            buf.write(b"\x00" + struct.pack(">I", int(schema_id)))
            fastavro.schemaless_writer(buf, schema, e)
            out.write(buf.getvalue().hex() + "\n")
    with open(f"{out_dir}/events.avro", "wb") as out:
        fastavro.writer(out, schema, events, codec="deflate")


if __name__ == "__main__":
    main()
