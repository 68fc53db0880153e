"""Keep secrets out of everything a sweep writes or prints.

A value is secret when its key looks like a credential (api_key, token, password, secret, ...) or when it
contains the value of such an environment variable (WANDB_API_KEY, RAY_AUTH_TOKEN, HF_TOKEN, ...).
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "<redacted>"
# Whole words only: `max_new_tokens` and a search dimension's `key` are not secrets; `api_key` and `hf_token` are.
SECRET_NAME = re.compile(r"(^|[_.-])(api_?key|access_?key|secret_?key|private_?key|token|password|passwd|secret|"
                         r"credentials?|auth)($|[_.-])", re.IGNORECASE)
MIN_SECRET_LENGTH = 8  # shorter environment values are too likely to occur by chance


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(str(name)))


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of credential-like environment variables, longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_name(k) and len(v) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def scrub_text(text: str, environ: dict[str, str] | None = None) -> str:
    """Replace every secret environment value inside `text`."""
    for value in secret_values(environ):
        text = text.replace(value, REDACTED)
    return text


def redact(data: Any, environ: dict[str, str] | None = None) -> Any:
    """A copy of `data` with credential-like keys and secret values replaced."""
    if isinstance(data, dict):
        return {k: REDACTED if is_secret_name(k) and v not in (None, "") else redact(v, environ)
                for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact(v, environ) for v in data]
    if isinstance(data, str):
        return scrub_text(data, environ)
    return data
