"""The single declaration of every API command.

A command's declaration drives request parsing and validation, permission checks, listApis and the
CLI's help: there is no second list of parameters anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from strato.api.params import Param, T


class Role(Enum):
    ROOT_ADMIN = 1
    DOMAIN_ADMIN = 2
    USER = 0


ADMIN = frozenset({Role.ROOT_ADMIN})
DOMAIN_ADMINS = frozenset({Role.ROOT_ADMIN, Role.DOMAIN_ADMIN})
EVERYONE = frozenset({Role.ROOT_ADMIN, Role.DOMAIN_ADMIN, Role.USER})


class Kind(Enum):
    """How the result is wrapped: one object, a list, a success flag, an async job, or raw."""

    OBJECT = "object"
    LIST = "list"
    SUCCESS = "success"
    ASYNC = "async"
    RAW = "raw"


LIST_PARAMS = (
    Param("keyword", T.STRING, "List by keyword", max_length=255),
    Param("page", T.INTEGER, "The page number of the result set", min_value=1),
    Param("pagesize", T.INTEGER, "The number of items per page (-1 for all)", min_value=-1),
)
OWNED_LIST_PARAMS = (
    Param(
        "listall",
        T.BOOLEAN,
        "If true, list all resources the caller may see; if false or absent, only the caller's own",
    ),
    Param("domainid", T.UUID, "List only resources belonging to the domain specified"),
    Param(
        "isrecursive",
        T.BOOLEAN,
        "Defaults to false; if true, also lists resources of the domain's subdomains",
    ),
    Param("account", T.STRING, "List resources by account; must be used with domainid", max_length=255),
)


Handler = Callable[..., Any]


@dataclass
class Command:
    name: str
    description: str
    handler: Handler
    params: tuple[Param, ...]
    kind: Kind
    response_object: str | None
    access: frozenset[Role]
    is_async: bool = False
    since: str = "4.0.0"
    response_fields: tuple[tuple[str, str], ...] = ()
    allow_anonymous: bool = False
    event: str | None = None
    params_by_name: dict[str, Param] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.params_by_name = {p.name: p for p in self.params}

    @property
    def response_key(self) -> str:
        return self.name.lower() + "response"


COMMANDS: dict[str, Command] = {}


def api(
    name: str,
    description: str,
    *,
    params: tuple[Param, ...] | list[Param] = (),
    kind: Kind = Kind.OBJECT,
    response: str | None = None,
    access: frozenset[Role] = EVERYONE,
    owned: bool = False,
    since: str = "4.0.0",
    fields: tuple[tuple[str, str], ...] = (),
    anonymous: bool = False,
    event: str | None = None,
) -> Callable[[Handler], Handler]:
    """Declares a command. List commands get keyword/page/pagesize, owned lists also listall etc.

    `event` names the audit event type (CloudStack's, e.g. ZONE.CREATE) that every call records.
    """

    def register(fn: Handler) -> Handler:
        all_params = tuple(params)
        if kind == Kind.LIST:
            all_params += LIST_PARAMS
            if owned:
                all_params += OWNED_LIST_PARAMS
        if name.lower() in COMMANDS:
            raise RuntimeError(f"API command {name} declared twice")
        COMMANDS[name.lower()] = Command(
            name=name,
            description=description,
            handler=fn,
            params=all_params,
            kind=kind,
            response_object=response,
            access=access,
            is_async=kind == Kind.ASYNC,
            since=since,
            response_fields=fields,
            allow_anonymous=anonymous,
            event=event,
        )
        return fn

    return register


def find(name: str) -> Command | None:
    return COMMANDS.get(name.lower())
