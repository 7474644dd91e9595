"""``geo-ws load``: the scripted load tool and its Locust user.

- :mod:`~geo_ws.load.command`: the ``geo-ws load`` command line;
- :mod:`~geo_ws.load.options`: :class:`~geo_ws.load.options.LoadOptions`, what a run does;
- :mod:`~geo_ws.load.runner`: one scenario in one process (:func:`~geo_ws.load.runner.run`);
- :mod:`~geo_ws.load.scenarios`: ``echo``, ``broadcast``, ``connect``, ``idle`` and scripts;
- :mod:`~geo_ws.load.part`: what one process measured, and the merge of several;
- :mod:`~geo_ws.load.report`: percentiles, the summary, the SLOs, the exit status, the report;
- :mod:`~geo_ws.load.plot`: ``--plot``;
- :mod:`~geo_ws.load.processes`: ``--processes N``;
- :mod:`~geo_ws.load.locust`: the Locust user behind :mod:`geo_ws.locust`.

Nothing is imported here: ``import geo_ws.load.options`` stays light.
"""
