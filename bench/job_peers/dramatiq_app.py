"""Dramatiq with the RabbitMQ broker: actors; the results middleware is not used."""

from __future__ import annotations

import sys

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.job_peers import mark_done, write_notification_sync

broker = RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:5672/")
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench", max_retries=0)
def noop() -> None:
    return None


@dramatiq.actor(queue_name="bench", max_retries=0)
def notify() -> None:
    write_notification_sync()


@dramatiq.actor(queue_name="bench", max_retries=0)
def sentinel() -> None:
    mark_done()


if __name__ == "__main__":
    if sys.argv[1] == "flush":
        broker.flush_all()
    else:
        kind, count = sys.argv[2], int(sys.argv[3])
        actor = noop if kind == "noop" else notify
        for _ in range(count):
            actor.send()
        sentinel.send()
