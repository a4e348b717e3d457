"""Meridian engine core: channels, pipeline, message store, queues. Knows no network protocol."""
