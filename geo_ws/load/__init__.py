"""``geo-ws load``: the scripted load tool and its Locust user."""
