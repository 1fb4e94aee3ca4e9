"""Serving a layer file to another host's agent (`GET /v1/layers`, what `pull_layer` reads).

Not a command role: the endpoint streams bytes, so the service asks the driver for an open file by pool
id and layer name and never sees a path; the driver refuses names that leave the pool."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import BinaryIO


@dataclass
class OpenedLayer:
    """A layer file opened for reading; the caller closes `file`."""

    file: BinaryIO
    size: int


class LayerExport(abc.ABC):
    """A driver whose layer files other agents may pull."""

    @abc.abstractmethod
    async def open_layer(self, pool_id: str, name: str, pool_path: str | None = None) -> OpenedLayer:
        """Open a layer of an attached pool (by id, else by its directory `pool_path`): NOT_FOUND for an
        unknown pool or file, BAD_REQUEST for a name that escapes the pool's directory."""
