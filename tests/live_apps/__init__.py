"""Small apps served by ``geo-ws run`` in subprocess tests, and the helper that runs them."""
