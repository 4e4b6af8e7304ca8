# The consumer snippet of the seed article ("Consumers and Consumer Groups"), as written
# there except for its typo: KafkaConsumer takes its topics as positional arguments
# (`topic='payments'` is refused as an unknown config by kafka-python).
from kafka import KafkaConsumer
import json

consumer = KafkaConsumer(
    'payments',
    bootstrap_servers='localhost:9092',
    group_id='payments-processor',
    value_deserializer=lambda v: json.loads(v.decode('utf-8'))
)

for message in consumer:
    print(f"Offset: {message.offset}, Data: {message.value}")
