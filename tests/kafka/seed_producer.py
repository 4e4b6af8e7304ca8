# The producer snippet of the seed article (../shared/seeds, "Producers"), as written
# there except for its typo: `lamda` is `lambda` (and the page's stray "." line is gone).
from kafka import KafkaProducer
import json

producer = KafkaProducer(
    bootstrap_servers='localhost:9092',
    value_serializer=lambda v: json.dumps(v).encode('utf-8')
)

# This message goes to partition with key 'user-10'

producer.send(
    topic='payments',
    key=b'user-10',
    value={"amount": 50}
)

producer.flush()
