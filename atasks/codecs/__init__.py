"""Codecs: how call arguments, results and exceptions become bytes."""

from atasks.codecs.base import Codec
from atasks.codecs.json_codec import JSONCodec
from atasks.codecs.pickle_codec import PickleCodec
from atasks.namespaces import get_codec

CODECS: dict[str, type[Codec]] = {"pickle": PickleCodec, "json": JSONCodec}

__all__ = ["CODECS", "Codec", "JSONCodec", "PickleCodec", "get_codec"]
