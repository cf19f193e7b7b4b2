"""A pure-Python MQTT 3.1.1 broker (amqtt) for ``outpost up`` where mosquitto is not installed.

Demo use only: loopback, anonymous, no TLS. Run as ``python -m outpost.embedded_broker PORT``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

__all__ = ["main"]


async def _serve(port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
