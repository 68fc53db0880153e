"""Secrets are recognised by name and by value; ordinary keys that merely contain the words are kept."""

from __future__ import annotations

from lora_tune.compose import compose_config
from lora_tune.redaction import REDACTED, is_secret_name, redact, scrub_text


def test_secret_names() -> None:
    for name in ("api_key", "WANDB_API_KEY", "hf_token", "RAY_AUTH_TOKEN", "password", "aws_secret_access_key",
                 "token", "secret"):
        assert is_secret_name(name), name
    for name in ("key", "max_new_tokens", "keys", "monkey", "tokenizer", "r", "target_modules"):
        assert not is_secret_name(name), name


def test_redact_by_name_and_by_value() -> None:
    env = {"WANDB_API_KEY": "wandb-secret-value-123", "HF_TOKEN": "hf_abcdefgh12345", "HOME": "/root"}
    data = {"wandb": {"api_key": "x-anything"}, "note": "key=wandb-secret-value-123", "home": "/root",
            "search_space": {"r": {"key": "peft.r"}}, "list": ["hf_abcdefgh12345"]}
    clean = redact(data, env)
    assert clean == {"wandb": {"api_key": REDACTED}, "note": f"key={REDACTED}", "home": "/root",
                     "search_space": {"r": {"key": "peft.r"}}, "list": [REDACTED]}
    assert scrub_text("token hf_abcdefgh12345 here", env) == f"token {REDACTED} here"


def test_a_full_config_survives_redaction_unchanged() -> None:
    from lora_tune.config import SweepConfig, to_dict

    cfg = compose_config([])
    assert SweepConfig.from_dict(redact(to_dict(cfg), {})) == cfg
