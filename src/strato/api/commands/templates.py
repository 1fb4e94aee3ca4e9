"""Templates and ISOs: register, list, update, delete, copy, prepare, create from volumes or VMs."""

from __future__ import annotations

from typing import Any

from strato.api import views_compute as views
from strato.api.envelope import AsyncStarted, Listing
from strato.api.pageload import render_page
from strato.api.params import TAGS_FILTER, Param, T
from strato.api.registry import ADMIN, Kind, api
from strato.services.core.context import CallContext
from strato.services.core.listing import Page
from strato.services.images import copies, create, delete, register, templates

COMMON = (
    Param("name", T.STRING, "The name of the template", required=True, max_length=255),
    Param("displaytext", T.STRING, "The display text of the template", max_length=4096),
    Param(
        "url",
        T.STRING,
        "The URL of where the template is hosted: http(s):// or file:// (a path on the hosts)",
        required=True,
        max_length=2048,
    ),
    Param("zoneid", T.STRING, "The ID of the zone the template is to be hosted on (-1: all zones)", max_length=64),
    Param(
        "checksum",
        T.STRING,
        "The checksum of the file: {md5}, {sha1}, {sha256}, {sha512} prefix or bare hex",
        max_length=255,
    ),
    Param("ostypeid", T.STRING, "The OS type of the template", max_length=255),
    Param("ispublic", T.BOOLEAN, "True if the template is available to all accounts (admins)"),
    Param("isfeatured", T.BOOLEAN, "True if the template is featured (admins)"),
    Param("isextractable", T.BOOLEAN, "True if the template may be downloaded"),
    Param("bootable", T.BOOLEAN, "True if the ISO/template is bootable"),
    Param("imagestoreid", T.UUID, "Strato: the image store to put it on (default: the zone's first)"),
)
TEMPLATE_FILTER = Param(
    "templatefilter",
    T.STRING,
    "featured, self, selfexecutable, sharedexecutable, executable, community or all",
    required=True,
    choices=templates.FILTERS,
)


def _deploy_result(ctx: CallContext, tmpl: Any, job_id: str) -> Listing:
    out = views.template(ctx.session, tmpl)
    out["jobid"] = job_id  # Strato: follow the download / copy with queryAsyncJobResult
    return Listing([out], 1)


@api(
    "registerTemplate",
    "Registers an existing template into the cloud; data disks make a multi-disk template",
    kind=Kind.LIST,
    response="template",
    event="TEMPLATE.CREATE",
    params=(
        *COMMON,
        Param("format", T.STRING, "The format of the template: QCOW2 or RAW", required=True, max_length=16),
        Param("hypervisor", T.STRING, "The target hypervisor for the template", required=True, max_length=32),
        Param("passwordenabled", T.BOOLEAN, "True if the template supports the password reset feature"),
        Param("requireshvm", T.BOOLEAN, "True if this template requires HVM"),
        Param("storageid", T.UUID, "Strato: register straight onto this primary pool (admins)"),
        Param(
            "datadisks",
            T.MAP,
            "Strato: data disks of a multi-disk template, each with url, format, checksum "
            "and imagestoreid or storageid",
            max_length=2048,
        ),
    ),
)
def register_template(ctx: CallContext, args: dict[str, Any]) -> Listing:
    tmpl, job_id = register.register(ctx, args, iso=False)
    return _deploy_result(ctx, tmpl, job_id)


@api(
    "registerIso",
    "Registers an existing ISO into the cloud",
    kind=Kind.LIST,
    response="iso",
    event="ISO.CREATE",
    params=COMMON,
)
def register_iso(ctx: CallContext, args: dict[str, Any]) -> Listing:
    tmpl, job_id = register.register(ctx, {**args, "format": "ISO"}, iso=True)
    out = views.iso(ctx.session, tmpl)
    out["jobid"] = job_id
    return Listing([out], 1)


LIST_PARAMS = (
    Param("id", T.UUID, "The template ID"),
    Param("name", T.STRING, "The template name", max_length=255),
    Param("zoneid", T.UUID, "List templates by zone ID"),
    Param("hypervisor", T.STRING, "The hypervisor for which to restrict the search", max_length=32),
    Param("parenttemplateid", T.UUID, "List the data-disk templates of this template"),
    TAGS_FILTER,
)


@api(
    "listTemplates",
    "List all public, private, and privileged templates",
    kind=Kind.LIST,
    response="template",
    owned=True,
    params=(TEMPLATE_FILTER, *LIST_PARAMS),
)
def list_templates(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = templates.list_templates(ctx, args, Page.from_args(args), iso=False)
    return Listing(render_page(ctx.session, rows, lambda t: views.template(ctx.session, t)), total)


@api(
    "listIsos",
    "Lists all available ISO files",
    kind=Kind.LIST,
    response="iso",
    owned=True,
    params=(
        Param("isofilter", T.STRING, "Filter like listTemplates' templatefilter", choices=templates.FILTERS),
        Param("bootable", T.BOOLEAN, "True to list only bootable ISOs"),
        *LIST_PARAMS,
    ),
)
def list_isos(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = templates.list_templates(ctx, args, Page.from_args(args), iso=True)
    return Listing(render_page(ctx.session, rows, lambda t: views.iso(ctx.session, t)), total)


UPDATE_PARAMS = (
    Param("id", T.UUID, "The ID of the image file", required=True),
    Param("name", T.STRING, "The name of the image file", max_length=255),
    Param("displaytext", T.STRING, "The display text of the image", max_length=4096),
    Param("bootable", T.BOOLEAN, "True if image is bootable"),
    Param("ostypeid", T.STRING, "The OS type", max_length=255),
    Param("passwordenabled", T.BOOLEAN, "True if the image supports the password reset feature"),
    Param("ispublic", T.BOOLEAN, "True for public images (admins)"),
    Param("isfeatured", T.BOOLEAN, "True for featured images (admins)"),
    Param("isextractable", T.BOOLEAN, "True if the image may be extracted"),
)


@api(
    "updateTemplate",
    "Updates attributes of a template",
    response="template",
    event="TEMPLATE.UPDATE",
    params=UPDATE_PARAMS,
)
def update_template(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.template(ctx.session, templates.update_template(ctx, args, iso=False))


@api("updateIso", "Updates an ISO file", response="iso", event="ISO.UPDATE", params=UPDATE_PARAMS)
def update_iso(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.iso(ctx.session, templates.update_template(ctx, args, iso=True))


DELETE_PARAMS = (
    Param("id", T.UUID, "The ID of the template", required=True),
    Param("zoneid", T.UUID, "The zone (all of them when absent)"),
    Param("forced", T.BOOLEAN, "Ignored: a template in use is never deleted"),
)


@api(
    "deleteTemplate",
    "Deletes a template: its files on image stores and its cached copies on pools",
    kind=Kind.ASYNC,
    event="TEMPLATE.DELETE",
    params=DELETE_PARAMS,
)
def delete_template(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(delete.delete(ctx, args, iso=False), args["id"])


@api("deleteIso", "Deletes an ISO file", kind=Kind.ASYNC, event="ISO.DELETE", params=DELETE_PARAMS)
def delete_iso(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(delete.delete(ctx, args, iso=True), args["id"])


COPY_PARAMS = (
    Param("id", T.UUID, "Template ID", required=True),
    Param("sourcezoneid", T.UUID, "ID of the zone the template is being copied from"),
    Param("destzoneid", T.UUID, "ID of the zone the template is being copied to"),
    Param("destimagestoreid", T.UUID, "Strato: the image store to copy to"),
    Param("deststorageid", T.UUID, "Strato: the primary pool to copy to (admins)"),
)


@api(
    "copyTemplate",
    "Copies a template (all its disks) to another zone, image store or primary pool",
    kind=Kind.ASYNC,
    event="TEMPLATE.COPY",
    params=COPY_PARAMS,
)
def copy_template(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    tmpl, job_id = copies.copy_to(ctx, args, iso=False)
    return AsyncStarted(job_id, tmpl.id)


@api("copyIso", "Copies an ISO to another zone or image store", kind=Kind.ASYNC, event="ISO.COPY", params=COPY_PARAMS)
def copy_iso(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    tmpl, job_id = copies.copy_to(ctx, args, iso=True)
    return AsyncStarted(job_id, tmpl.id)


@api(
    "prepareTemplate",
    "Loads a template onto a primary storage pool ahead of use",
    kind=Kind.LIST,
    response="template",
    access=ADMIN,
    event="TEMPLATE.PREPARE",
    params=(
        Param("templateid", T.UUID, "Template ID of the template to be prepared", required=True),
        Param("zoneid", T.UUID, "Zone ID of the template to be prepared", required=True),
        Param("storageid", T.UUID, "Storage pool ID to put the template on"),
    ),
)
def prepare_template(ctx: CallContext, args: dict[str, Any]) -> Listing:
    tmpl, job_id = copies.prepare(ctx, args)
    return _deploy_result(ctx, tmpl, job_id)


@api(
    "createTemplate",
    "Creates a template from a volume, or (Strato) from all the disks of a stopped VM",
    kind=Kind.ASYNC,
    event="TEMPLATE.CREATE",
    params=(
        Param("name", T.STRING, "The name of the template", required=True, max_length=255),
        Param("displaytext", T.STRING, "The display text of the template", max_length=4096),
        Param("ostypeid", T.STRING, "The OS type", max_length=255),
        Param("volumeid", T.UUID, "The ID of the disk volume the template is created from"),
        Param("snapshotid", T.UUID, "The ID of the volume snapshot the template is created from"),
        Param("virtualmachineid", T.UUID, "Strato: all the disks of this stopped VM (a multi-disk template)"),
        Param("imagestoreid", T.UUID, "Strato: the image store for the template's disks"),
        Param("storageid", T.UUID, "Strato: the primary pool for the template's disks (admins)"),
        Param("datadisks", T.MAP, "Strato: per volume (volumeid) its own imagestoreid or storageid", max_length=255),
        Param("ispublic", T.BOOLEAN, "True for a public template (admins)"),
        Param("isfeatured", T.BOOLEAN, "True for a featured template (admins)"),
        Param("passwordenabled", T.BOOLEAN, "True if the template supports password reset"),
    ),
)
def create_template(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    tmpl, job_id = create.create_from(ctx, args)
    return AsyncStarted(job_id, tmpl.id)
