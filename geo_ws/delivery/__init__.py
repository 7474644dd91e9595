"""Addressing and delivery: per-endpoint registries, brokers (memory, Redis), the Emitter."""
