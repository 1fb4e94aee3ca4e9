"""A volume's layer chain moved to another pool: the pieces every storage-motion strategy shares.

A disk is a chain of layers, the top one writable, the ones below frozen. Moving it to pool P copies
each frozen layer P lacks (a template base already cached on P is reused: one copy per pool, shared by
every linked clone there, never flattened), rebases the copies onto their copied parents, then the top
layer is copied (offline) or mirrored (live, by the operation itself) onto the copied chain. The
database switch is the commit point; after it, the source layers no other layer uses are removed.

Every row this move makes carries the job's id (`creating_job`): the undo removes exactly those (and
never a template copy another disk has meanwhile been built on), also after a crash, when the steps'
outputs may be missing. Agent calls run outside database sessions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.engine import Database
from strato.db.models import Host, Layer, StoragePool, Volume
from strato.db.models.storage import LAYER_TEMPLATE, LAYER_VOLUME
from strato.db.models.vmsnapshots import LAYER_MEMORY
from strato.engine.operation import Operation, Step, StepData
from strato.errors import CloudError, ResourceInUse, ResourceUnavailable
from strato.protocol.client import AgentClient
from strato.protocol.messages import CopyLayer, GetLayerInfo, LayerInfo, LayerRef, PullLayer, RebaseLayer
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.reach import host_for
from strato.services.motion.tree import branch_rows, memory_rows, repoint, tree_bytes
from strato.services.storage.layers import (
    ensure_template_on_pool,
    ref,
    remove_layer_file,
    remove_unfinished_layer,
    volume_layer_path,
)

log = logging.getLogger("strato.jobs")

ProgressFn = Callable[[int, int], None]
Copier = Callable[[LayerRef, LayerRef, ProgressFn], LayerInfo]
"""Copies one frozen layer file (source -> target, keeping its backing reference), reporting progress."""


# --- reading a chain -----------------------------------------------------------------------------------


def chain_rows(session: Session, top_layer_id: str | None) -> list[Layer]:
    """The layers of a chain, top first, down to its base."""
    out: list[Layer] = []
    current = session.get(Layer, top_layer_id) if top_layer_id else None
    while current is not None and current not in out:
        out.append(current)
        current = session.get(Layer, current.parent_id) if current.parent_id else None
    return out


def pool_copy(session: Session, layer: Layer, pool_id: str) -> Layer | None:
    """The Ready copy of a frozen layer already on a pool (template bases are cached per pool by path)."""
    if layer.pool_id == pool_id:
        return layer
    if layer.kind != LAYER_TEMPLATE:
        return None
    return session.scalar(
        select(Layer).where(Layer.pool_id == pool_id, Layer.path == layer.path, Layer.state == "Ready",
                            Layer.removed.is_(None))
    )  # fmt: skip


def bytes_to_move(session: Session, volume: Volume, pool_id: str) -> int:
    """What a move copies: the physical size of the frozen layers the pool lacks, the top layer, and
    the rest of the snapshot tree (an estimate for the capacity rule and the progress total)."""
    rows = chain_rows(session, volume.top_layer_id)
    total = rows[0].physical_size if rows else 0
    total += tree_bytes(session, volume, pool_id)
    return total + sum(r.physical_size for r in rows[1:] if pool_copy(session, r, pool_id) is None)


# --- copying a layer: on one host, or pulled from another host's agent --------------------------------


def same_host_copier(db: Database, host_id: str, bandwidth: int | None) -> Copier:
    """CopyLayer on one host that reaches both pools."""

    def copy(source: LayerRef, target: LayerRef, progress: ProgressFn) -> LayerInfo:
        with db.session() as s:
            host = s.get(Host, host_id)
            assert host is not None
            client, name = host_client(host), host.name
        with agent_errors(name):
            return client.run_long(
                CopyLayer(source=source, target=target, bandwidth_bytes_per_s=bandwidth), on_progress=progress
            )

    return copy


def pull_copier(db: Database, target_host_id: str, source_host_id: str, bandwidth: int | None) -> Copier:
    """PullLayer: the target host's agent reads the layer from the source host's agent, host to host
    (for pools no single host reaches, e.g. two hosts' local pools)."""

    def copy(source: LayerRef, target: LayerRef, progress: ProgressFn) -> LayerInfo:
        with db.session() as s:
            dst, src = s.get(Host, target_host_id), s.get(Host, source_host_id)
            assert dst is not None and src is not None
            client, name, url, token = host_client(dst), dst.name, src.url, src.token
        command = PullLayer(source_agent_url=url, source_token=token, source=source, target=target,
                            bandwidth_bytes_per_s=bandwidth)  # fmt: skip
        with agent_errors(name):
            return client.run_long(command, on_progress=progress)

    return copy


def copier_between(db: Database, source_pool_id: str, target_pool_id: str, prefer: str | None,
                   bandwidth: int | None) -> Copier:  # fmt: skip
    """A host reaching both pools copies (the preferred one first); else a target host pulls."""
    with db.session() as s:
        src, dst = s.get(StoragePool, source_pool_id), s.get(StoragePool, target_pool_id)
        assert src is not None and dst is not None
        try:
            return same_host_copier(db, host_for(s, [src, dst], prefer=prefer).id, bandwidth)
        except ResourceUnavailable:
            pass
        target_host, source_host = host_for(s, [dst]).id, host_for(s, [src]).id
    return pull_copier(db, target_host, source_host, bandwidth)


def _host_of(db: Database, pool_id: str, prefer: str | None) -> tuple[AgentClient, str]:
    with db.session() as s:
        pool = s.get(StoragePool, pool_id)
        assert pool is not None
        host = host_for(s, [pool], prefer=prefer)
        return host_client(host), host.name


# --- progress across the layers of a move -------------------------------------------------------------


class ByteProgress:
    """Bytes done / total across the layers of a move, reported as one figure; each layer's own
    figures are scaled to its share (a mirror reports its own total, not the file's size)."""

    def __init__(self, report: ProgressFn, total: int) -> None:
        self.report, self.total, self.offset = report, max(total, 1), 0

    def part(self, share: int) -> ProgressFn:
        start = self.offset
        self.offset += share

        def on_progress(done: int, total: int) -> None:
            part = share * done // total if total else 0
            self.report(min(start + part, self.total), self.total)

        return on_progress


# --- the steps ----------------------------------------------------------------------------------------


@dataclass
class ChainMove:
    """Steps moving one volume's chain, with the rest of its snapshot tree, to `pool_id` inside an
    operation `op`.

    `frozen_steps()` copy, rebase and check the frozen layers (the present chain's, the other branches'
    and, for a root disk, the VM's memory files); `offline_top_step()` copies the top layer (a
    live strategy mirrors it instead, into `new_top_row()` on `target_backing()`); `switch()` is the
    database change made in the operation's commit step; `cleanup_step()` removes the source layers
    after it. `prefix` keeps step names unique when one operation moves several volumes. `copier`
    builds the layer copier (default: a host reaching both pools, else a pull)."""

    op: Operation[Any]
    volume_id: str
    pool_id: str
    bandwidth: int | None = None
    prefer_host: str | None = None
    prefix: str = ""
    copier: Callable[[], Copier] | None = None
    progress: ByteProgress | None = None
    report: ProgressFn | None = None
    """Where the chain's (bytes done, its total) go; default the job's own progress."""
    on_phase: Callable[[str], None] | None = None
    """Told what the chain is copying now (shown as the job's phase)."""

    @property
    def db(self) -> Database:
        return self.op.db

    @property
    def job_id(self) -> str:
        return self.op.job.job_id

    def name(self, step: str) -> str:
        return f"{self.prefix}{step}"

    # --- what the chain is ---------------------------------------------------------------------------

    def frozen_steps(self) -> list[Step]:
        return [
            Step(self.name("plan target chain"), self._plan, undo=self.remove_copies),
            Step(self.name("copy frozen layers"), self._copy_frozen, undo=self.remove_copies),
            Step(self.name("rebase copies"), self._rebase),
        ]

    def offline_top_step(self) -> Step:
        return Step(self.name("copy top layer"), self._copy_top, undo=self.remove_copies)

    def cleanup_step(self) -> Step:
        return Step(self.name("remove source layers"), self._cleanup)

    def plan(self) -> StepData:
        return self.op.output(self.name("plan target chain"))

    def mapping(self) -> dict[str, str]:
        """Source frozen layer id -> its copy on the target pool."""
        return dict(self.op.output(self.name("copy frozen layers")).get("map", {}))

    def _plan(self) -> StepData:
        with self.db.session() as s:
            vol = s.get(Volume, self.volume_id)
            assert vol is not None and vol.top_layer_id
            rows = chain_rows(s, vol.top_layer_id)
            branches, memory = branch_rows(s, vol), memory_rows(s, vol)
            return {
                "source_pool": vol.pool_id,
                "chain": [r.id for r in rows],
                "sizes": [r.physical_size for r in rows],
                "branches": [r.id for r in branches],
                "branch_sizes": [r.physical_size for r in branches],
                "memory": [r.id for r in memory],
                "memory_sizes": [r.physical_size for r in memory],
                "total": bytes_to_move(s, vol, self.pool_id),
            }

    def progress_for(self, share: int) -> ProgressFn:
        if self.progress is None:
            self.progress = ByteProgress(self.report or self.op.job.progress, int(self.plan().get("total", 0)))
        return self.progress.part(share)

    def say(self, text: str) -> None:
        if self.on_phase is not None:
            self.on_phase(text)

    def _make_copier(self) -> Copier:
        if self.copier is not None:
            return self.copier()
        plan = self.plan()
        return copier_between(self.db, plan["source_pool"], self.pool_id, self.prefer_host, self.bandwidth)

    def _frozen_order(self) -> list[tuple[str, int]]:
        """Every frozen layer of the tree with its size, each after its parent: the present chain bottom
        up, the other branches, then the memory files."""
        plan = self.plan()
        chain = list(zip(plan["chain"][1:], plan["sizes"][1:], strict=True))
        branches = list(zip(plan.get("branches", []), plan.get("branch_sizes", []), strict=True))
        memory = list(zip(plan.get("memory", []), plan.get("memory_sizes", []), strict=True))
        return [*reversed(chain), *branches, *memory]

    def _copy_frozen(self) -> StepData:
        """Bottom up, so that each copy's parent is on the pool before it is rebased."""
        mapping: dict[str, str] = {}
        copier: Copier | None = None
        for layer_id, size in self._frozen_order():
            with self.db.session() as s:
                row = s.get(Layer, layer_id)
                assert row is not None
                found = pool_copy(s, row, self.pool_id)
                if found is not None:
                    mapping[layer_id] = found.id
                    continue
                kind, template_id = row.kind, row.template_id
            progress = self.progress_for(size)
            what = {LAYER_TEMPLATE: "the template base", LAYER_MEMORY: "a memory file"}.get(kind, "a frozen layer")
            self.say(f"{self.prefix}copying {what} to the target pool")
            if kind == LAYER_TEMPLATE and template_id:
                # The per-pool template cache: concurrent copies of one template to one pool make one.
                mapping[layer_id] = ensure_template_on_pool(self.db, template_id, self.pool_id, progress, self.job_id)
                continue
            copier = copier or self._make_copier()
            mapping[layer_id] = self._copy_one(layer_id, copier, progress)
        return {"map": mapping}

    def _copy_one(self, source_id: str, copier: Copier, progress: ProgressFn, top: bool = False) -> str:
        """Copies one layer of the volume into a new row on the target pool (Creating until copied)."""
        with self.db.session() as s:
            src = s.get(Layer, source_id)
            pool, src_pool = s.get(StoragePool, self.pool_id), s.get(StoragePool, src.pool_id if src else "")
            assert src is not None and pool is not None and src_pool is not None
            kind = LAYER_VOLUME if top else src.kind
            row = Layer(pool_id=pool.id, path="", volume_id=self.volume_id if kind == LAYER_VOLUME else None,
                        vm_id=src.vm_id if kind == LAYER_MEMORY else None, kind=kind, frozen=not top,
                        virtual_size=src.virtual_size, state="Creating", creating_job=self.job_id)  # fmt: skip
            s.add(row)
            s.flush()
            row.path = src.path if not top else volume_layer_path(self.volume_id, row.id)
            new_id, source, target = row.id, ref(src_pool, src.path), ref(pool, row.path)
        info = copier(source, target, progress)
        with self.db.session() as s:
            made = s.get(Layer, new_id)
            assert made is not None
            made.physical_size = info.physical_size
            if not top:  # a top copy is Ready once rebased and checked
                made.state = "Ready"
        return new_id

    def _rebase(self) -> StepData:
        """Points each copy at its copied parent (a copy keeps its source's backing reference), then
        checks every copy against its source."""
        plan, mapping = self.plan(), self.mapping()
        memory = set(plan.get("memory", []))
        for layer_id, _size in self._frozen_order():
            copy_id = mapping[layer_id]
            if copy_id == layer_id or layer_id in memory:
                continue
            with self.db.session() as s:
                src = s.get(Layer, layer_id)
                assert src is not None
                parent = src.parent_id
            if parent is not None and parent not in mapping:
                raise ResourceUnavailable(f"Layer {layer_id} rests on layer {parent}, which this move did not copy")
            self._rebase_row(copy_id, mapping[parent] if parent else None, made_only=True)
        for layer_id, _size in self._frozen_order():
            if mapping[layer_id] != layer_id:
                self.check_copy(layer_id, mapping[layer_id])
        return {}

    def check_copy(self, source_id: str, copy_id: str) -> None:
        """A frozen copy this move made matches its source (GetLayerInfo of both): its size, and its
        backing file is the copy of the source's parent."""
        with self.db.session() as s:
            src, row = s.get(Layer, source_id), s.get(Layer, copy_id)
            assert src is not None and row is not None
            if row.creating_job != self.job_id:
                return  # a template copy another job made and checked
            src_pool, pool = s.get(StoragePool, src.pool_id), s.get(StoragePool, row.pool_id)
            assert src_pool is not None and pool is not None
            parent = s.get(Layer, row.parent_id) if row.parent_id else None
            source, target = ref(src_pool, src.path), ref(pool, row.path)
            want_backing = parent.path if parent is not None else None
            qcow2 = row.kind != LAYER_MEMORY
        src_client, src_name = _host_of(self.db, src_pool.id, self.prefer_host)
        with agent_errors(src_name):
            before = src_client.call(GetLayerInfo(layer=source))
        client, name = _host_of(self.db, self.pool_id, self.prefer_host)
        with agent_errors(name):
            info = client.call(GetLayerInfo(layer=target))
        backing = info.backing_file or None
        same_backing = (
            not qcow2
            or backing == want_backing
            or bool(backing and want_backing and backing.endswith("/" + want_backing))
        )
        if info.virtual_size != before.virtual_size or not same_backing:
            raise ResourceUnavailable(
                f"The copy of layer {src.path} on the target pool does not match its source: {info.virtual_size} "
                f"bytes on {backing or 'no backing'}, expected {before.virtual_size} on {want_backing or 'no backing'}"
            )

    def _rebase_row(self, layer_id: str, parent_id: str | None, made_only: bool = False) -> None:
        with self.db.session() as s:
            row = s.get(Layer, layer_id)
            assert row is not None
            if made_only and row.creating_job != self.job_id:
                return  # a copy another job made (a cached template base) is already right
            pool = s.get(StoragePool, row.pool_id)
            parent = s.get(Layer, parent_id) if parent_id else None
            assert pool is not None
            backing = ref(pool, parent.path) if parent is not None else None
            if parent is None and row.parent_id is None:
                return
            target = ref(pool, row.path)
        client, name = _host_of(self.db, self.pool_id, self.prefer_host)
        with agent_errors(name):
            client.call(RebaseLayer(layer=target, backing=backing))
        with self.db.session() as s:
            row = s.get(Layer, layer_id)
            assert row is not None
            row.parent_id = parent_id

    def target_backing(self) -> tuple[str | None, LayerRef | None]:
        """The copied parent of the top layer on the target pool (its id and ref), None for a disk
        without backing."""
        plan = self.plan()
        chain = plan["chain"]
        if len(chain) < 2:
            return None, None
        parent_id = self.mapping()[chain[1]]
        with self.db.session() as s:
            row, pool = s.get(Layer, parent_id), s.get(StoragePool, self.pool_id)
            assert row is not None and pool is not None
            return parent_id, ref(pool, row.path)

    def made_top_row(self) -> tuple[str, LayerRef] | None:
        """The new top layer's row if this move made it (for an undo: it makes nothing)."""
        with self.db.session() as s:
            row = s.scalar(
                select(Layer).where(Layer.volume_id == self.volume_id, Layer.pool_id == self.pool_id,
                                    Layer.creating_job == self.job_id, Layer.frozen.is_(False),
                                    Layer.removed.is_(None))
            )  # fmt: skip
            pool = s.get(StoragePool, self.pool_id)
            if row is None or pool is None:
                return None
            return row.id, ref(pool, row.path)

    def new_top_row(self) -> tuple[str, LayerRef]:
        """The row of the new top layer on the target pool (Creating, marked with the job), made once."""
        parent_id, _ = self.target_backing()
        with self.db.session() as s:
            existing = s.scalar(
                select(Layer).where(Layer.volume_id == self.volume_id, Layer.pool_id == self.pool_id,
                                    Layer.creating_job == self.job_id, Layer.frozen.is_(False),
                                    Layer.removed.is_(None))
            )  # fmt: skip
            pool = s.get(StoragePool, self.pool_id)
            vol = s.get(Volume, self.volume_id)
            assert pool is not None and vol is not None
            if existing is not None:
                return existing.id, ref(pool, existing.path)
            top = s.get(Layer, vol.top_layer_id)
            assert top is not None
            row = Layer(pool_id=pool.id, path="", volume_id=self.volume_id, kind=LAYER_VOLUME, parent_id=parent_id,
                        virtual_size=top.virtual_size, state="Creating", creating_job=self.job_id)  # fmt: skip
            s.add(row)
            s.flush()
            row.path = volume_layer_path(self.volume_id, row.id)
            return row.id, ref(pool, row.path)

    def _copy_top(self) -> StepData:
        """Offline: copy the top layer, rebase it onto the copied parent, and check the copy."""
        plan = self.plan()
        top_id = plan["chain"][0]
        self.say(f"{self.prefix}copying the top layer to the target pool")
        new_id = self._copy_one(top_id, self._make_copier(), self.progress_for(plan["sizes"][0]), top=True)
        parent_id, _ = self.target_backing()
        self._rebase_row(new_id, parent_id)
        self.check_layer(new_id)
        return {"top": new_id}

    def check_layer(self, layer_id: str) -> LayerInfo:
        """GetLayerInfo of a made layer: it must be there, qcow2, of the source's size, on the right
        backing; then it is Ready."""
        with self.db.session() as s:
            row = s.get(Layer, layer_id)
            pool = s.get(StoragePool, self.pool_id)
            assert row is not None and pool is not None
            parent = s.get(Layer, row.parent_id) if row.parent_id else None
            target, size = ref(pool, row.path), row.virtual_size
            want_backing = parent.path if parent is not None else None
        client, name = _host_of(self.db, self.pool_id, self.prefer_host)
        with agent_errors(name):
            info = client.call(GetLayerInfo(layer=target))
        backing = info.backing_file or None
        same_backing = backing == want_backing or (backing and want_backing and backing.endswith("/" + want_backing))
        if info.virtual_size != size or not same_backing:
            raise ResourceUnavailable(
                f"The copy of the volume on the target pool does not match its source: {info.virtual_size} bytes "
                f"on {info.backing_file or 'no backing'}, expected {size} on {want_backing or 'no backing'}"
            )
        with self.db.session() as s:
            row = s.get(Layer, layer_id)
            assert row is not None
            row.state, row.physical_size = "Ready", info.physical_size
        return info

    # --- commit and clean-up -------------------------------------------------------------------------

    def switch(self, session: Session, top_id: str) -> None:
        """The database records the volume on its new pool (inside the operation's commit step)."""
        vol, top = session.get(Volume, self.volume_id), session.get(Layer, top_id)
        assert vol is not None and top is not None
        top.state = "Ready"
        vol.pool_id, vol.top_layer_id = self.pool_id, top_id
        repoint(session, self.volume_id, self.mapping())

    def _cleanup(self) -> StepData:
        """Removes the source tree's own layers, children before parents: the memory files, the old top,
        the other branches, then the chain top down, unless another layer is built on one or it is a
        template's cached base (the template's, not this volume's). Idempotent."""
        plan = self.plan()
        kept: list[str] = []
        for layer_id in [*plan.get("memory", []), *plan["chain"][:1], *reversed(plan.get("branches", []))]:
            with self.db.session() as s:
                row = s.get(Layer, layer_id)
                if row is None or row.removed is not None or row.pool_id == self.pool_id:
                    continue
                if row.kind not in (LAYER_VOLUME, LAYER_MEMORY):
                    kept.append(layer_id)
                    continue
            try:
                remove_layer_file(self.db, layer_id)
            except ResourceInUse:
                kept.append(layer_id)
            except CloudError as exc:
                log.warning("move of volume %s: source layer %s left: %s", self.volume_id, layer_id, exc.text)
                return {"kept": [*kept, layer_id], "error": exc.text}
        for layer_id in plan["chain"][1:]:
            with self.db.session() as s:
                row = s.get(Layer, layer_id)
                if row is None or row.removed is not None:
                    continue
                if row.kind != LAYER_VOLUME or row.pool_id == self.pool_id:
                    kept.append(layer_id)
                    break
            try:
                remove_layer_file(self.db, layer_id)
            except ResourceInUse:
                kept.append(layer_id)
                break
            except CloudError as exc:
                # Past the commit point the move has happened: a source file the host will not delete
                # (still open, host down) is reported and left, not a reason to fail the job.
                log.warning("move of volume %s: source layer %s left: %s", self.volume_id, layer_id, exc.text)
                return {"kept": [*kept, layer_id], "error": exc.text}
        return {"kept": kept}

    def remove_copies(self) -> None:
        """Undo: removes every layer this job made on the target pool, newest first, whatever state it
        reached; a template copy another layer now uses stays. Missing files are no error."""
        with self.db.session() as s:
            rows = list(s.scalars(
                select(Layer).where(Layer.pool_id == self.pool_id, Layer.creating_job == self.job_id,
                                    Layer.removed.is_(None)).order_by(Layer.created.desc())
            ))  # fmt: skip
            memory = self._memory_paths(s)
            mine = (
                r
                for r in rows
                if r.kind == LAYER_TEMPLATE
                or (r.kind == LAYER_VOLUME and r.volume_id == self.volume_id)
                or (r.kind == LAYER_MEMORY and r.path in memory)
            )
            made = [(r.id, r.state == "Ready") for r in mine]
        for layer_id, ready in made:
            if not ready:
                remove_unfinished_layer(self.db, layer_id)
                continue
            try:
                remove_layer_file(self.db, layer_id)
            except ResourceInUse:
                continue

    def _memory_paths(self, session: Session) -> set[str]:
        """The paths of the memory files this move copies (their copies keep the path)."""
        ids = list(self.plan().get("memory", []))
        return {r.path for r in session.scalars(select(Layer).where(Layer.id.in_(ids)))} if ids else set()
