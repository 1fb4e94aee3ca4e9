"""A CloudStack API client for the CLI: signs requests (version 3) with stored keys and follows jobs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx


def config_path() -> Path:
    default = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "strato" / "cli.json"
    return Path(os.environ.get("STRATO_CLI_CONFIG", default))


@dataclass
class Profile:
    url: str
    apikey: str
    secretkey: str

    @classmethod
    def load(cls) -> Profile | None:
        env = (
            os.environ.get("STRATO_URL"),
            os.environ.get("STRATO_API_KEY"),
            os.environ.get("STRATO_SECRET_KEY"),
        )
        if all(env):
            return cls(*(str(v) for v in env))
        path = config_path()
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(url=data["url"], apikey=data["apikey"], secretkey=data["secretkey"])

    def save(self) -> Path:
        path = config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))
        path.chmod(0o600)
        return path


class ApiError(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


def signed_query(params: dict[str, str], apikey: str, secret: str, ttl_s: int = 600) -> dict[str, str]:
    """Adds apiKey, signatureVersion=3, expires and the HMAC-SHA1 signature."""
    expires = (datetime.now(UTC) + timedelta(seconds=ttl_s)).strftime("%Y-%m-%dT%H:%M:%S+0000")
    full = {**params, "apiKey": apikey, "response": "json", "signatureVersion": "3", "expires": expires}
    canonical = "&".join(f"{k}={quote(v, safe='*')}" for k, v in sorted(full.items())).lower()
    digest = hmac.new(secret.encode(), canonical.encode(), hashlib.sha1).digest()
    return {**full, "signature": base64.b64encode(digest).decode()}


class StratoApi:
    def __init__(self, url: str, apikey: str, secretkey: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        if not self.url.endswith("/client/api"):
            self.url += "/client/api"
        self.apikey, self.secretkey = apikey, secretkey
        self._http = httpx.Client(timeout=timeout)

    def call(self, command: str, **params: str) -> dict[str, Any]:
        query = signed_query({"command": command, **params}, self.apikey, self.secretkey)
        resp = self._http.post(self.url, data=query)
        try:
            body = resp.json()
        except ValueError:
            raise ApiError(resp.status_code, resp.text[:300]) from None
        inner = next(iter(body.values())) if isinstance(body, dict) and body else {}
        if resp.status_code >= 400 or (isinstance(inner, dict) and "errorcode" in inner):
            raise ApiError(int(inner.get("errorcode", resp.status_code)), str(inner.get("errortext", resp.text)))
        return inner if isinstance(inner, dict) else {}

    def wait_job(
        self,
        job_id: str,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll: float = 0.5,
        timeout: float = 3600.0,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.call("queryAsyncJobResult", jobid=job_id)
            if on_progress is not None:
                on_progress(job)
            if job.get("jobstatus", 0) != 0:
                return job
            if time.monotonic() > deadline:
                raise ApiError(530, f"job {job_id} still running after {timeout}s")
            time.sleep(poll)


def login_for_keys(url: str, username: str, password: str, domain: str = "/") -> Profile:
    """Logs in with a password and fetches (or creates) the user's API keys."""
    base = url.rstrip("/")
    endpoint = base if base.endswith("/client/api") else base + "/client/api"
    with httpx.Client(timeout=30) as http:
        resp = http.post(
            endpoint,
            data={
                "command": "login",
                "username": username,
                "password": password,
                "domain": domain,
                "response": "json",
            },
        )
        body = resp.json()
        if resp.status_code != 200:
            inner = next(iter(body.values()))
            raise ApiError(resp.status_code, inner.get("errortext", "login failed"))
        login = body["loginresponse"]
        params = {"id": login["userid"], "sessionkey": login["sessionkey"], "response": "json"}
        keys = http.post(endpoint, data={"command": "getUserKeys", **params}).json()
        userkeys = keys.get("getuserkeysresponse", {}).get("userkeys", {})
        if not userkeys.get("apikey"):
            keys = http.post(endpoint, data={"command": "registerUserKeys", **params}).json()
            userkeys = keys["registeruserkeysresponse"]["userkeys"]
        http.post(endpoint, data={"command": "logout", "sessionkey": login["sessionkey"], "response": "json"})
    return Profile(url=base, apikey=userkeys["apikey"], secretkey=userkeys["secretkey"])
