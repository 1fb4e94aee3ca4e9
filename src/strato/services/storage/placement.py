"""Creating an Allocated volume on a pool: the two steps that createVolume and the attach of an Allocated
volume share ("place", "create layer").

An Allocated volume has no pool and no file (it takes no space); these steps choose its pool by the rule
of `rules.pool_for_new_disk` (Creating), then make its empty layer. Both undo to Allocated with no file,
and both are no-ops for a volume already placed (a Ready volume being attached): their undos act only
while the volume is Creating, so they can never remove the file of a volume they did not make."""

from __future__ import annotations

from typing import Any

from strato.db.models import Volume
from strato.engine.operation import Operation, Step, StepData
from strato.services.core.states import volume_to
from strato.services.storage.layers import create_layer_on, finish_volume_layer, new_volume_layer, remove_volume_files
from strato.services.storage.rules import pool_for_new_disk
from strato.services.storage.volumes import live_vm, live_volume


class PlaceSteps:
    """A tasklet: pick the pool (the VM's `vm_id` decides which pools qualify), then make the layer."""

    def __init__(self, op: Operation[Any], volume_id: str, vm_id: str | None) -> None:
        self.op, self.volume_id, self.vm_id = op, volume_id, vm_id

    def steps(self) -> list[Step]:
        return [
            Step("place", self._place, undo=self._unplace),
            Step("create layer", self._create_layer, undo=self._remove_layer),
        ]

    def _place(self) -> StepData:
        with self.op.db.session() as s:
            vol = live_volume(s, self.volume_id)
            if vol.state != "Allocated":  # placed before a restart, or already on its pool
                return {"pool_id": vol.pool_id}
            vm = live_vm(s, self.vm_id) if self.vm_id else None
            pool = pool_for_new_disk(s, vol, vm)
            vol.pool_id = pool.id
            volume_to(vol, "Creating")
            return {"pool_id": pool.id}

    def _unplace(self) -> None:
        with self.op.db.session() as s:
            vol = s.get(Volume, self.volume_id)
            if vol is not None and vol.state == "Creating":
                vol.pool_id = None
                volume_to(vol, "Allocated")

    def _create_layer(self) -> StepData:
        with self.op.db.session() as s:
            vol = live_volume(s, self.volume_id)
            if vol.state != "Creating" or vol.top_layer_id:  # made before a restart, or not ours to make
                return {"layer_id": vol.top_layer_id}
            assert vol.pool_id
            pool_id, size = vol.pool_id, vol.size
        layer_id, path = new_volume_layer(self.op.job, self.volume_id, pool_id, size)
        info = create_layer_on(self.op.db, pool_id, path, size, None)
        finish_volume_layer(self.op.job, layer_id, self.volume_id, info.virtual_size, info.physical_size)
        return {"layer_id": layer_id}

    def _remove_layer(self) -> None:
        with self.op.db.session() as s:
            vol = s.get(Volume, self.volume_id)
            if vol is None or vol.state != "Creating":
                return
        remove_volume_files(self.op.db, self.volume_id)
        with self.op.db.session() as s:
            vol = s.get(Volume, self.volume_id)
            if vol is not None:
                vol.top_layer_id = None
