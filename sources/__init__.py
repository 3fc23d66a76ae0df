"""Streams for stream-monitor: the embedded glyph domain, ImageNet-C corruptions, CCC streams,
webdataset shards and image folders."""
