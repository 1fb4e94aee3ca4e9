"""One API call: authenticate, find the command, validate its parameters against its declaration,
check the caller's role, run the handler in a unit of work, record the audit event, wrap the result."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from strato.api import authn
from strato.api.envelope import AsyncStarted, Listing, error_body, list_body
from strato.api.params import T, collect_maps, parse_list, parse_scalar
from strato.api.registry import Command, Kind, Role, find
from strato.db.engine import Database
from strato.errors import CloudError, ErrorCode, InvalidParameter, Unauthorized, UnsupportedAction
from strato.services.core import settings
from strato.services.core.context import CallContext
from strato.services.core.events import record_event

log = logging.getLogger("strato.api")

UNKNOWN_COMMAND = "The given command does not exist or it is not available for the user"


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    cookies: dict[str, str | None] | None = None


@dataclass
class Request:
    params: dict[str, str]  # original names and decoded values
    method: str
    session_cookie: str | None  # the JSESSIONID cookie
    remote: str
    session_header: str | None = None  # the sessionkey header, as CloudStack's UI may send it


# Refused requests of one user written as ERROR events: at most one per user and command per this many
# seconds. The rest go to the server log at INFO: a client retrying in a loop must not fill the event log
# (events are the record of actions), yet an admin still sees each kind of refused action of a user.
FAILURE_EVENT_EVERY_S = 60.0


class Dispatcher:
    def __init__(self, db: Database, on_job_submitted: Callable[[], None]) -> None:
        self.db = db
        self.on_job_submitted = on_job_submitted
        self._failure_events: dict[tuple[str, str], tuple[float, int]] = {}  # (user, command) -> (last, refused)
        self._failure_lock = threading.Lock()

    def handle(self, req: Request) -> Reply:
        lowered = {k.lower(): v for k, v in req.params.items()}
        name = lowered.get("command", "")
        cmd = find(name) if name else None
        key = cmd.response_key if cmd else ((name.lower() + "response") if name else "errorresponse")
        who: tuple[str, str] | None = None
        try:
            if cmd is not None and cmd.allow_anonymous:
                return self._run_anonymous(cmd, req, lowered)
            with self.db.session() as s:
                session_key = session_key_of(lowered, req.session_cookie, req.session_header)
                creds = authn.Credentials(req.params, session_key, req.session_cookie)
                ctx = authn.authenticate(s, creds)
                who = (ctx.account.id, ctx.user.id)
                if cmd is None or _role(ctx) not in cmd.access:
                    raise UnsupportedAction(UNKNOWN_COMMAND)
                args = parse_args(cmd, lowered)
                if cmd.kind == Kind.LIST and "page" in args and "pagesize" not in args:
                    args["pagesize"] = int(settings.get(s, "default.page.size"))
                result = cmd.handler(ctx, args)
                body = wrap(cmd, result)
                self._audit(cmd, ctx, args, result)
                submitted = s.info.pop("jobs_submitted", False)
            if submitted:
                self.on_job_submitted()  # the job rows are committed: wake the local workers now
            return Reply(200, body)
        except CloudError as exc:
            if cmd is None and exc.code == ErrorCode.UNSUPPORTED_ACTION:
                key = "errorresponse"
            self._record_failure(cmd, who, exc)
            return Reply(int(exc.code), error_body(key, exc.code, exc.text))
        except Exception:
            log.exception("internal error in %s", name)
            return Reply(
                530,
                error_body(
                    key,
                    ErrorCode.INTERNAL_ERROR,
                    f"Internal error executing command {name[:64]}; see the server log",
                ),
            )

    def _audit(self, cmd: Command, ctx: CallContext, args: dict[str, Any], result: Any) -> None:
        if cmd.event:
            entity = _entity_id(result, args)
            record_event(
                ctx.session,
                cmd.event,
                _describe(cmd, args, entity, async_=cmd.is_async),
                account_id=ctx.account.id,
                user_id=ctx.user.id,
                state="Scheduled" if cmd.is_async else "Completed",
                resource_id=entity,
            )

    def _run_anonymous(self, cmd: Command, req: Request, lowered: dict[str, str]) -> Reply:
        with self.db.session() as s:
            args = parse_args(cmd, lowered)
            result = cmd.handler(s, args, req)
        if isinstance(result, Reply):
            return result
        return Reply(200, wrap(cmd, result))

    def _record_failure(self, cmd: Command | None, who: tuple[str, str] | None, exc: CloudError) -> None:
        """A refused action of an authenticated user: an ERROR event, at most one per user and command per
        minute."""
        if cmd is None or not cmd.event or who is None or isinstance(exc, Unauthorized):
            return
        account_id, user_id = who
        now = time.monotonic()
        with self._failure_lock:
            slot = (user_id, cmd.name)
            last, refused = self._failure_events.get(slot, (-FAILURE_EVENT_EVERY_S, 0))
            if now - last < FAILURE_EVENT_EVERY_S:
                self._failure_events[slot] = (last, refused + 1)
                write = False
            else:
                self._failure_events[slot] = (now, 0)
                write = True
            if len(self._failure_events) > 10_000:
                self._failure_events = {
                    k: v for k, v in self._failure_events.items() if now - v[0] < FAILURE_EVENT_EVERY_S
                }
        if not write:
            log.info("refused %s of user %s: %s", cmd.name, user_id, exc.text[:200])
            return
        more = f" ({refused} more refused in the minute before)" if refused else ""
        try:
            with self.db.session() as s:
                record_event(
                    s,
                    cmd.event,
                    f"Error while executing {cmd.name}: {exc.text}{more}",
                    level="ERROR",
                    state="Completed",
                    account_id=account_id,
                    user_id=user_id,
                )
        except Exception:
            log.exception("could not record the refusal of %s", cmd.name)


def session_key_of(lowered: dict[str, str], cookie: str | None, header: str | None = None) -> str | None:
    """As CloudStack: a session call carries its session key (parameter or header) and its JSESSIONID
    cookie, and both must belong to the same session (checked in authn). A cookie alone is refused, so
    that another site cannot make a browser call the API with it (CSRF); a key alone too, so that a key
    seen in a URL or a log is not enough to act as the user."""
    key = lowered.get("sessionkey") or header
    if key is None:
        if cookie is not None and "signature" not in lowered:
            raise Unauthorized("A session request must carry the sessionkey parameter (the cookie alone is not enough)")
        return None
    if cookie is None:
        raise Unauthorized("A session request must carry its session cookie (JSESSIONID) with the sessionkey")
    return key


def _role(ctx: CallContext) -> Role:
    if ctx.is_root_admin:
        return Role.ROOT_ADMIN
    if ctx.is_domain_admin:
        return Role.DOMAIN_ADMIN
    return Role.USER


def parse_args(cmd: Command, lowered: dict[str, str]) -> dict[str, Any]:
    maps = collect_maps(cmd.name, lowered)
    args: dict[str, Any] = {}
    for p in cmd.params:
        if p.type == T.MAP:
            entries = maps.get(p.name)
            if entries is None and p.required:
                raise InvalidParameter(
                    f"Unable to execute API command {cmd.name.lower()} due to missing parameter {p.name}"
                )
            if entries is not None:
                for entry in entries:
                    for sub, value in entry.items():
                        if len(value) > p.max_length:
                            raise InvalidParameter(
                                f"Unable to execute API command {cmd.name.lower()}: "
                                f"{p.name}[].{sub} is longer than {p.max_length} characters"
                            )
                        if "\x00" in value:
                            raise InvalidParameter(
                                f"Unable to execute API command {cmd.name.lower()}: "
                                f"{p.name}[].{sub} contains a NUL character"
                            )
                args[p.name] = entries
            continue
        raw = lowered.get(p.name)
        if raw is None or (raw == "" and p.type != T.STRING):
            if p.required:
                raise InvalidParameter(
                    f"Unable to execute API command {cmd.name.lower()} due to missing parameter {p.name}"
                )
            continue
        if "\x00" in raw:  # no value holds one; PostgreSQL refuses them in text, SQLite would store them
            raise InvalidParameter(
                f"Unable to execute API command {cmd.name.lower()}: parameter {p.name} contains a NUL character"
            )
        args[p.name] = parse_list(cmd.name, p, raw) if p.type == T.LIST else parse_scalar(cmd.name, p, raw)
    return args


def wrap(cmd: Command, result: Any) -> dict[str, Any]:
    key = cmd.response_key
    if cmd.kind == Kind.LIST:
        assert isinstance(result, Listing) and cmd.response_object
        return list_body(key, cmd.response_object, result)
    if cmd.kind == Kind.ASYNC:
        assert isinstance(result, AsyncStarted)
        body: dict[str, Any] = {"jobid": result.job_id}
        if result.entity_id:
            body["id"] = result.entity_id
        return {key: body}
    if cmd.kind == Kind.SUCCESS:
        out: dict[str, Any] = {"success": True}
        if isinstance(result, str):
            out["displaytext"] = result
        return {key: out}
    if cmd.kind == Kind.RAW:
        return {key: result}
    assert cmd.response_object
    return {key: {cmd.response_object: result}}


def _entity_id(result: Any, args: dict[str, Any]) -> str | None:
    if isinstance(result, AsyncStarted):
        return result.entity_id or args.get("id")
    if isinstance(result, dict) and isinstance(result.get("id"), str):
        return str(result["id"])
    value = args.get("id")
    return value if isinstance(value, str) else None


def _describe(cmd: Command, args: dict[str, Any], entity: str | None, async_: bool) -> str:
    what = args.get("name") or args.get("username") or entity or ""
    verb = "Scheduled" if async_ else "Successfully completed"
    return f"{verb} {cmd.name} {what}".strip()
