"""Usage: generateUsageRecords, listUsageRecords, listUsageTypes (CloudStack's usage server commands)."""

from __future__ import annotations

from typing import Any

from strato.api.envelope import Listing
from strato.api.pageload import render_page
from strato.api.params import Param, T
from strato.api.registry import ADMIN, DOMAIN_ADMINS, Kind, api
from strato.api.views_usage import usage_record
from strato.errors import InvalidParameter
from strato.services.core import usage
from strato.services.core.context import CallContext
from strato.services.core.listing import Page

DATES = (
    Param("startdate", T.DATE, "Start of the range (yyyy-MM-dd or yyyy-MM-dd HH:mm:ss, UTC)", required=True),
    Param("enddate", T.DATE, "End of the range (yyyy-MM-dd: the whole day; or yyyy-MM-dd HH:mm:ss)", required=True),
)


@api(
    "generateUsageRecords",
    "Generates the usage records of the periods in the range from the usage events",
    kind=Kind.SUCCESS,
    access=ADMIN,
    event="USAGE.GENERATE",
    params=(*DATES, Param("domainid", T.UUID, "Ignored as in CloudStack: records are made for every domain")),
)
def generate(ctx: CallContext, args: dict[str, Any]) -> None:
    start = usage.parse_date(args["startdate"], "startdate")
    end = usage.parse_date(args["enddate"], "enddate", end=True)
    if end <= start:
        raise InvalidParameter("Parameter enddate must not be before startdate")
    usage.generate(ctx.session, start, end)


@api(
    "listUsageRecords",
    "Lists usage records for accounts",
    kind=Kind.LIST,
    response="usagerecord",
    access=DOMAIN_ADMINS,
    params=(
        *DATES,
        Param("account", T.STRING, "The account's name (with domainid, or in the caller's domain)", max_length=255),
        Param("accountid", T.UUID, "The account's ID"),
        Param("domainid", T.UUID, "The domain's ID"),
        Param("isrecursive", T.BOOLEAN, "With domainid: its subdomains too"),
        Param("type", T.INTEGER, "The usage type (listUsageTypes)"),
        Param("usageid", T.UUID, "The ID of the resource billed"),
    ),
)
def list_records(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = usage.list_records(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda r: usage_record(ctx.session, r)), total)


@api(
    "listUsageTypes",
    "Lists the usage types Strato records",
    kind=Kind.LIST,
    response="usagetype",
    access=DOMAIN_ADMINS,
)
def list_types(ctx: CallContext, args: dict[str, Any]) -> Listing:
    items = [{"usagetypeid": t.number, "name": t.name, "description": t.description} for t in usage.TYPES.values()]
    return Listing(items, len(items))
