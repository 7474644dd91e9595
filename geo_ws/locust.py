"""A Locust user for plain WebSocket endpoints, on geo_ws's client (``geo_ws[locust]``).

Locust is gevent-based, like geo_ws's client, so each Locust user holds a real
WebSocket connection in its own greenlet. Every step fires a Locust ``request``
event (request type ``CONNECT``, ``SEND``, ``RECV``, ``REQUEST``, ``PING`` or
``CLOSE``; name: the endpoint's path, or ``name=``), so connect, send and receive
times show in Locust's statistics, charts and failures like HTTP requests do::

    from locust import between, task
    from geo_ws.locust import WebSocketUser

    class Chat(WebSocketUser):
        wait_time = between(0.5, 1.5)

        def on_start(self):
            self.client.connect("/chat")

        @task
        def talk(self):
            self.client.request("hello")      # send, then wait for one reply

Run it with ``locust -f locustfile.py --host ws://127.0.0.1:8000`` (``http://`` hosts
are turned into ``ws://``). A failed step is recorded as a failure and ends the task
(Locust's ``RescheduleTask``); a lost connection is reopened by the next step.
"""

from .load.locust import UnexpectedMessage, WebSocketSession, WebSocketUser

__all__ = ["UnexpectedMessage", "WebSocketSession", "WebSocketUser"]
