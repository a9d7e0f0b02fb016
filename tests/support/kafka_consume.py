#!/usr/bin/env python3
"""Reads a Kafka topic from the beginning with librdkafka (confluent-kafka), the
independent client the log-sink tests read back with.

usage: kafka_consume.py BROKER TOPIC MIN_COUNT TIMEOUT_SECONDS

Prints one JSON line per message: {"key": str|null, "value": str, "partition": int,
"offset": int, "timestamp": int}, and stops once MIN_COUNT messages were read, or when
TIMEOUT_SECONDS have passed (then it prints what it got and exits 0; the test judges).
Exits 2 when confluent-kafka is missing.
"""
import json
import sys
import time
import uuid

try:
    from confluent_kafka import Consumer, KafkaError
except ImportError as e:  # pragma: no cover
    print(f"confluent-kafka is not installed: {e}", file=sys.stderr)
    sys.exit(2)


def main():
    broker, topic, want, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    c = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": "sluice-test-" + uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "broker.address.family": "v4",
        }
    )
    c.subscribe([topic])
    got = 0
    deadline = time.monotonic() + timeout
    try:
        while got < want and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    print(f"consumer error: {m.error()}", file=sys.stderr)
                continue
            key = m.key()
            print(
                json.dumps(
                    {
                        "key": key.decode() if key is not None else None,
                        "value": m.value().decode(),
                        "partition": m.partition(),
                        "offset": m.offset(),
                        "timestamp": m.timestamp()[1],
                    }
                ),
                flush=True,
            )
            got += 1
    finally:
        c.close()


if __name__ == "__main__":
    main()
