"""Scenarios the integration tests (tests/it/kafka.rs) run with real Kafka clients against
a Spate broker they started. Each prints one JSON object on its last line of stdout; the
Rust test checks it against what the broker holds.

usage: clients.py SCENARIO --bootstrap HOST:PORT [options]
"""

import argparse
import json
import sys
import threading
import time


def kafka_python_keyed(args):
    """kafka-python (idempotent by default) sends keyed records; reports where each landed."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=args.bootstrap)
    futures = []
    for i in range(args.count):
        key = f"key-{i % args.keys}".encode()
        futures.append((key, producer.send(args.topic, key=key, value=f"value-{i}".encode())))
    producer.flush()
    placed = []
    for key, future in futures:
        metadata = future.get(timeout=30)
        placed.append([key.decode(), metadata.partition, metadata.offset])
    producer.close()
    print(json.dumps({"placed": placed}))


def kafka_python_read(args):
    """kafka-python reads a topic from the start with no group; reports every record."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=args.bootstrap, enable_auto_commit=False)
    partitions = [TopicPartition(args.topic, p) for p in consumer.partitions_for_topic(args.topic)]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    records = []
    deadline = time.time() + 30
    while len(records) < args.count and time.time() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            for message in batch:
                records.append([message.partition, message.offset,
                                (message.key or b"").decode(), message.value.decode()])
    consumer.close()
    print(json.dumps({"records": records}))


def confluent_config(args, **extra):
    config = {"bootstrap.servers": args.bootstrap}
    config.update(extra)
    return config


def confluent_produce(args):
    """confluent-kafka (librdkafka) produces, compressed as asked; reports the offsets."""
    from confluent_kafka import Producer

    producer = Producer(confluent_config(
        args, **{"compression.type": args.compression, "enable.idempotence": True,
                 "linger.ms": 5, "acks": "all"}))
    delivered = []
    errors = []

    def report(error, message):
        if error is not None:
            errors.append(str(error))
        else:
            delivered.append([message.key().decode(), message.partition(), message.offset()])

    for i in range(args.count):
        producer.produce(args.topic, key=f"key-{i % args.keys}", value=f"{args.compression}-value-{i}" * 4,
                         callback=report)
        producer.poll(0)
    remaining = producer.flush(30)
    print(json.dumps({"delivered": delivered, "errors": errors, "unflushed": remaining}))


def confluent_read(args):
    """confluent-kafka reads a topic from the start in a group of its own."""
    from confluent_kafka import Consumer

    consumer = Consumer(confluent_config(
        args, **{"group.id": args.group, "auto.offset.reset": "earliest",
                 "enable.auto.commit": False}))
    consumer.subscribe([args.topic])
    records = []
    deadline = time.time() + 40
    while len(records) < args.count and time.time() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error():
            print(f"consumer error: {message.error()}", file=sys.stderr)
            continue
        records.append([message.partition(), message.offset(),
                        (message.key() or b"").decode(), message.value().decode()])
    consumer.close()
    print(json.dumps({"records": records}))


def confluent_group(args):
    """A group of several confluent-kafka members sharing a topic's partitions: one member
    leaves midway, the others take its partitions over; each member commits what it read.
    Reports what each member got and its assignments over time."""
    from confluent_kafka import Consumer, TopicPartition

    lock = threading.Lock()
    seen = {}
    assignments = {}
    stop = threading.Event()
    leaver_done = threading.Event()

    def member(name, leave_after):
        consumer = Consumer(confluent_config(
            args, **{"group.id": args.group, "auto.offset.reset": "earliest",
                     "enable.auto.commit": False, "session.timeout.ms": 6000,
                     "heartbeat.interval.ms": 500, "client.id": name}))

        def on_assign(consumer, partitions):
            with lock:
                assignments.setdefault(name, []).append(sorted(p.partition for p in partitions))

        consumer.subscribe([args.topic], on_assign=on_assign)
        got = 0
        while not stop.is_set():
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            with lock:
                seen.setdefault(name, []).append([message.partition(), message.offset()])
            consumer.commit(message=message, asynchronous=False)
            got += 1
            if leave_after and got >= leave_after:
                break
        consumer.close()
        if leave_after:
            leaver_done.set()

    threads = [threading.Thread(target=member, args=(f"member-{i}", args.leave_after if i == 0 else 0))
               for i in range(args.members)]
    for thread in threads:
        thread.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        with lock:
            total = len({(p, o) for records in seen.values() for p, o in records})
        if total >= args.count and leaver_done.is_set():
            break
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join()
    # What the group committed, read back through the committed-offsets API.
    consumer = Consumer(confluent_config(args, **{"group.id": args.group}))
    committed = consumer.committed([TopicPartition(args.topic, p) for p in range(args.partitions)],
                                   timeout=20)
    consumer.close()
    print(json.dumps({"seen": seen, "assignments": assignments,
                      "committed": {str(tp.partition): tp.offset for tp in committed}}))


def admin(args):
    """Kafka's admin calls through confluent-kafka: create, describe configs, metadata, add
    partitions, describe the cluster, delete a topic."""
    from confluent_kafka.admin import AdminClient, NewTopic, ConfigResource

    client = AdminClient({"bootstrap.servers": args.bootstrap})
    created = client.create_topics([NewTopic(args.topic, num_partitions=3, replication_factor=1,
                                             config={"retention.ms": "3600000"})])
    result = {}
    for topic, future in created.items():
        future.result(20)
        result["created"] = topic
    again = client.create_topics([NewTopic(args.topic, num_partitions=3, replication_factor=1)])
    try:
        again[args.topic].result(20)
        result["again"] = "created"
    except Exception as error:  # TopicAlreadyExists, as Kafka
        result["again"] = error.args[0].name()
    configs = client.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, args.topic)])
    for _, future in configs.items():
        entries = future.result(20)
        result["retention.ms"] = entries["retention.ms"].value
    metadata = client.list_topics(timeout=20)
    result["partitions"] = len(metadata.topics[args.topic].partitions)
    from confluent_kafka.admin import NewPartitions
    checked = client.create_partitions([NewPartitions(args.topic, 4)], validate_only=True)
    checked[args.topic].result(20)
    result["validated"] = len(client.list_topics(timeout=20).topics[args.topic].partitions)
    for _, future in client.create_partitions([NewPartitions(args.topic, 5)]).items():
        future.result(20)
    result["grown"] = len(client.list_topics(timeout=20).topics[args.topic].partitions)
    try:
        shrink = client.create_partitions([NewPartitions(args.topic, 2)])
        shrink[args.topic].result(20)
        result["shrunk"] = "added"
    except Exception as error:  # INVALID_PARTITIONS, as Kafka
        result["shrunk"] = error.args[0].name()
    cluster = client.describe_cluster(request_timeout=20).result(20)
    result["cluster"] = {"id": cluster.cluster_id, "controller": cluster.controller.id,
                         "nodes": sorted([node.id, node.port] for node in cluster.nodes)}
    result["brokers"] = sorted(broker.id for broker in metadata.brokers.values())
    deleted = client.delete_topics([args.topic])
    for _, future in deleted.items():
        future.result(20)
    result["deleted"] = args.topic not in client.list_topics(timeout=20).topics
    print(json.dumps(result))


def confluent_failover(args):
    """An idempotent confluent-kafka producer with acks=all across a failover: half the
    records, then a signal file for the test (which kills the partition's leader and
    answers with the go file), then the rest; then everything read back from the start.
    Reports what was delivered where, the delivery errors, and what was read."""
    import os
    from confluent_kafka import Consumer, Producer, TopicPartition

    producer = Producer(confluent_config(
        args, acks="all", **{"enable.idempotence": True, "delivery.timeout.ms": 60000}))
    delivered, errors = [], []

    def report(error, message):
        if error is not None:
            errors.append(str(error))
        else:
            delivered.append([message.partition(), message.offset(), message.value().decode()])

    # A consumer group member bootstrapping from a node that stays up reads along.
    group_seen = set()
    group_done = threading.Event()

    def member():
        consumer = Consumer(confluent_config(
            args, **{"bootstrap.servers": args.group_bootstrap, "group.id": args.group,
                     "auto.offset.reset": "earliest", "enable.auto.commit": True}))
        consumer.subscribe([args.topic])
        while not group_done.is_set():
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                group_seen.add(message.value().decode())
        consumer.close()

    reader = threading.Thread(target=member)
    reader.start()
    half = args.count // 2
    for i in range(args.count):
        if i == half:
            producer.flush(30)
            with open(args.signal_file, "w") as signal:
                signal.write("ready")
            deadline = time.time() + 30
            while not os.path.exists(args.go_file) and time.time() < deadline:
                time.sleep(0.05)
        producer.produce(args.topic, value=f"value-{i}".encode(), on_delivery=report)
        producer.poll(0)
        time.sleep(0.002)
    producer.flush(60)
    wanted = {value for _, _, value in delivered}
    deadline = time.time() + 30
    while not wanted <= group_seen and time.time() < deadline:
        time.sleep(0.1)
    group_done.set()
    reader.join()
    consumer = Consumer(confluent_config(
        args, **{"group.id": f"{args.group}-reader", "enable.auto.commit": False}))
    consumer.assign([TopicPartition(args.topic, p, 0) for p in range(args.partitions)])
    read = []
    deadline = time.time() + 30
    while len(read) < len(delivered) and time.time() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            read.append([message.partition(), message.offset(), message.value().decode()])
    consumer.close()
    print(json.dumps({"delivered": delivered, "errors": errors, "read": read,
                      "group_missed": sorted(wanted - group_seen)}))


SCENARIOS = {
    "kafka-python-keyed": kafka_python_keyed,
    "kafka-python-read": kafka_python_read,
    "confluent-produce": confluent_produce,
    "confluent-read": confluent_read,
    "confluent-group": confluent_group,
    "admin": admin,
    "confluent-failover": confluent_failover,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", default="kafka-test")
    parser.add_argument("--group", default="kafka-test-group")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--leave-after", type=int, default=20)
    parser.add_argument("--compression", default="none")
    parser.add_argument("--signal-file")
    parser.add_argument("--go-file")
    parser.add_argument("--group-bootstrap")
    args = parser.parse_args()
    SCENARIOS[args.scenario](args)


if __name__ == "__main__":
    main()
