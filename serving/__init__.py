"""Serving policies over the network: openpi's websocket protocol (msgpack + numpy), decoded strictly."""
