"""createVolume with snapshotid: a new volume whose first layer is the snapshot's file, copied from the
image store onto the pool chosen (storageid) or placed by the allocator as for any new disk.

The tasklet is PlaceSteps with another "create layer": a copy instead of an empty qcow2. Its undo is
PlaceSteps' (the volume's layers removed, the volume Allocated again), so a failed copy leaves nothing."""

from __future__ import annotations

from typing import Any

from strato.db.models import Snapshot, StoragePool
from strato.engine.operation import Operation, StepData
from strato.protocol.messages import ConvertLayer
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.reach import host_for
from strato.services.storage.layers import finish_volume_layer, new_volume_layer, ref
from strato.services.storage.placement import PlaceSteps
from strato.services.storage.snapshots import backed_up, snapshot_file
from strato.services.storage.volumes import live_volume


class SnapshotPlaceSteps(PlaceSteps):
    """Pick the pool, then copy the snapshot into the volume's layer there."""

    def __init__(self, op: Operation[Any], volume_id: str, vm_id: str | None, snapshot_id: str) -> None:
        super().__init__(op, volume_id, vm_id)
        self.snapshot_id = snapshot_id

    def _create_layer(self) -> StepData:
        with self.op.db.session() as s:
            vol = live_volume(s, self.volume_id)
            if vol.state != "Creating" or vol.top_layer_id:
                return {"layer_id": vol.top_layer_id}
            assert vol.pool_id
            pool_id, size = vol.pool_id, vol.size
        layer_id, path = new_volume_layer(self.op.job, self.volume_id, pool_id, size)
        with self.op.db.session() as s:
            snap: Snapshot = backed_up(s, self.snapshot_id)
            source, store = snapshot_file(s, snap)
            pool = s.get(StoragePool, pool_id)
            assert pool is not None
            host = host_for(s, [pool], [store])
            client, host_name = host_client(host), host.name
        with agent_errors(host_name):
            info = client.run_long(
                ConvertLayer(source=source, target=ref(pool, path)), on_progress=self.op.job.part_progress(0, 1)
            )
        finish_volume_layer(self.op.job, layer_id, self.volume_id, info.virtual_size, info.physical_size)
        return {"layer_id": layer_id}
