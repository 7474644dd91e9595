"""Locust against the Robyn tour: each Locust user holds one WebSocket connection.

    geo-ws run examples.robyn_tour:app --port 8000
    locust -f examples/locustfile.py --host ws://127.0.0.1:8000 --headless -u 100 -r 20 -t 30s

Locust's statistics then show one row per step: CONNECT, RECV (the greeting),
REQUEST (a message and its reply, checked), PING and CLOSE, all under ``/web_socket``.
"""

from locust import between, task

from geo_ws.locust import WebSocketUser


class TourUser(WebSocketUser):
    """Connects to ``/web_socket``, which greets, then answers every message."""

    wait_time = between(0.05, 0.2)

    def on_start(self):
        self.client.connect("/web_socket")
        self.client.recv(expect="Connected to ws", name="greeting")

    @task(10)
    def message(self):
        self.client.request("hi", expect="Hello world, from ws")

    @task(1)
    def ping(self):
        self.client.ping()
