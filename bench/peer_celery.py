"""The Celery side of the end-to-end scenario: a task and its producer.

The worker runs it with ``celery -A bench.peer_celery worker -P gevent -c 100``; the
suite enqueues with ``python -m bench.peer_celery N URL``. The environment names the
broker, the queue and the results file, as for ``bench.peer_dramatiq``.

Configuration, chosen to match what async_consumer guarantees and nothing more:

* ``task_acks_late``: a message is acknowledged after its task ran, as
  async_consumer and Dramatiq do (Celery's default acknowledges before).
* No result backend: the task appends its result line to a file, like the others.
* Remote control, gossip, mingle and worker heartbeats off: a lone worker needs none.
* RabbitMQ: AMQP heartbeats off (``broker_heartbeat = 0``). Celery's gevent pool
  has no event-loop hub to send heartbeats from, so a connection that negotiated
  them can be closed by the broker for missed heartbeats; turning them off is the
  usual setting for this pool.
* Redis: every key under the run's prefix (kombu's ``global_keyprefix``), so the
  suite can delete them all afterwards, and a connection pool of twice the
  concurrency (kombu's default of 10 fails acknowledgements from 100 greenlets with
  "Too many connections", and the messages are delivered again).
"""

import json
import os
import sys

from celery import Celery

from bench.peer_task import POOL_SIZE, fetch_and_record

REDIS_URL = "redis://127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

app = Celery("bench_peer")
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_acks_late=True,
    task_ignore_result=True,
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
if os.environ.get("BENCH_BROKER") == "rabbitmq":
    app.conf.update(broker_url=AMQP_URL, broker_heartbeat=0)
else:
    app.conf.update(broker_url=REDIS_URL, broker_transport_options={
        "global_keyprefix": f"{QUEUE}:", "max_connections": 2 * POOL_SIZE})


@app.task(name="bench.fetch")
def fetch(job_id: str, url: str) -> None:
    fetch_and_record(job_id, url)


def main() -> int:
    count, url = int(sys.argv[1]), sys.argv[2]
    with app.producer_or_acquire() as producer:
        for index in range(count):
            fetch.apply_async((f"job-{index}", url), producer=producer)
    print(json.dumps({"enqueued": count}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
