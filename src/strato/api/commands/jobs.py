"""queryAsyncJobResult, listAsyncJobs and Strato's cancelAsyncJob."""

from __future__ import annotations

from typing import Any

from strato.api import views
from strato.api.envelope import Listing
from strato.api.params import Param, T
from strato.api.registry import Kind, api
from strato.services.core import jobs
from strato.services.core.context import CallContext
from strato.services.core.listing import Page


@api(
    "queryAsyncJobResult",
    "Retrieves the current status of an asynchronous job",
    kind=Kind.RAW,
    params=(Param("jobid", T.UUID, "The ID of the asynchronous job", required=True),),
)
def query_async_job_result(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.job(ctx.session, jobs.get_job(ctx, args["jobid"]), ctx.is_root_admin)


@api(
    "listAsyncJobs",
    "Lists all pending asynchronous jobs for the account",
    kind=Kind.LIST,
    response="asyncjobs",
    owned=True,
    params=(Param("startdate", T.DATE, "The start date of the async job (use format yyyy-MM-dd)"),),
)
def list_async_jobs(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = jobs.list_jobs(ctx, args, Page.from_args(args))
    return Listing(views.jobs_page(ctx.session, rows, ctx.is_root_admin), total)


@api(
    "cancelAsyncJob",
    "Asks a running or queued job to stop at its next safe point and roll back (Strato addition)",
    kind=Kind.RAW,
    event="ASYNC.JOB.CANCEL",
    params=(Param("jobid", T.UUID, "The ID of the asynchronous job", required=True),),
)
def cancel_async_job(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.job(ctx.session, jobs.cancel_job(ctx, args["jobid"]), ctx.is_root_admin)
