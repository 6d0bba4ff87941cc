"""The Dramatiq side of the end-to-end scenario: an actor and its producer.

The worker runs it with ``dramatiq-gevent --processes 1 --threads 100
bench.peer_dramatiq``; the suite enqueues with ``python -m bench.peer_dramatiq N URL``.
Both read the broker, queue and results file from the environment:

    BENCH_BROKER   redis or rabbitmq
    BENCH_QUEUE    the queue name (also the Redis namespace), fresh for every run
    BENCH_RESULTS  the file each finished job appends one JSON line to

The actor does what an async_consumer job does: one GET on a shared, pooled
``requests`` session, then a result line appended to a file (``O_APPEND``, one write).
"""

import json
import os
import sys

import dramatiq

from bench.peer_task import fetch_and_record

REDIS_URL = "redis://127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
QUEUE = os.environ.get("BENCH_QUEUE", "bench")


def make_broker() -> dramatiq.Broker:
    if os.environ.get("BENCH_BROKER") == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=AMQP_URL)

    from dramatiq.brokers.redis import RedisBroker

    return RedisBroker(url=REDIS_URL, namespace=QUEUE)


dramatiq.set_broker(make_broker())


@dramatiq.actor(queue_name=QUEUE, max_retries=3)
def fetch(job_id: str, url: str) -> None:
    fetch_and_record(job_id, url)


def main() -> int:
    count, url = int(sys.argv[1]), sys.argv[2]
    for index in range(count):
        fetch.send(f"job-{index}", url)
    dramatiq.get_broker().close()
    print(json.dumps({"enqueued": count}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
