"""One connection on gevent: the I/O core that servers and clients share, the client,
scheduling of blocking and async work.
"""
