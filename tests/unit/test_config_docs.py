"""docs/configuration.md documents every key the loader accepts, in the section of its table, and every algorithm
name the proposal parser accepts or refuses by name. The key lists come from config.py's allowed-key tuples, so a
key added to the loader without a line in the reference fails here."""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest

from xdpsec import config, proposals

DOC = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()

# Loader tuple -> the heading (start) of the section of docs/configuration.md that must name each of its keys.
SECTIONS = [
    (config._TOP_KEYS, "## Top level"),
    (config._GATEWAY_KEYS, "## [gateway]"),
    (config._IKE_CONN_KEYS, "## [connections.\\<name\\>]"),
    (config._CONN_KEYS, "## [connections.\\<name\\>]"),
    (config._LOCAL_KEYS, "## [connections.\\<name\\>.local] and [remote]"),
    (config._REMOTE_KEYS, "## [connections.\\<name\\>.local] and [remote]"),
    (config._ANY_CHILD_KEYS, "## Children"),
    (config._MANUAL_KEYS, "## Manual keying"),
    (config._SECRETS_KEYS, "## [secrets]"),
    (tuple(f"ike[].{k}" for k in config._SECRET_KEYS), "## [secrets]"),
    (config._LOG_KEYS, "## [log]"),
    (config.LOG_SUBSYSTEMS, "## [log]"),
    (config.LOG_LEVELS, "## [log]"),
    (config.LOG_FORMATS, "## [log]"),
    (config._METRICS_KEYS, "## [metrics]"),
    (config._DEBUG_KEYS, "## [debug]"),
    (config._LIMITS_KEYS, "## [limits]"),
]


def section(heading: str) -> str:
    """The text from `heading` to the next heading of the same level."""
    start = DOC.index(heading + "\n")
    level = heading.split(" ")[0] + " "
    end = DOC.find("\n" + level, start + len(heading))
    return DOC[start:end if end != -1 else len(DOC)]


@pytest.mark.parametrize("keys,heading", SECTIONS, ids=[h for _, h in SECTIONS])
def test_every_key_is_documented_in_its_section(keys, heading):
    text = section(heading)
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"{heading} does not document {missing}"


def test_every_accepted_algorithm_name_is_listed():
    text = section("### Accepted names")
    names = [*proposals._ENCR, *proposals._INTEG, *proposals._PRF, *proposals._KE, *proposals._ESN]
    assert [n for n in names if f"`{n}`" not in text] == []


def test_every_algorithm_refused_by_name_is_explained():
    text = section("### Refused by design")
    refused = {*proposals._REFUSED, *proposals._IKE_REFUSED, *proposals._KE_REFUSED}
    # AES-GCM/CCM ICV variants are listed by pattern (aes*gcm8 ...); every other name must appear as itself.
    by_name = [n for n in refused if not re.fullmatch(r"aes\d+(gcm|ccm)\d+", n)]
    assert [n for n in sorted(by_name) if f"`{n}`" not in text] == []


def test_default_proposals_are_the_documented_ones():
    text = section("## Proposals")
    for p in (*proposals.DEFAULT_IKE_PROPOSALS, *proposals.DEFAULT_ESP_PROPOSALS):
        assert f"`{p}`" in text


@pytest.mark.parametrize("block", re.findall(r"```toml\n(.*?)```", DOC, re.S))
def test_every_toml_example_parses(block):
    tomllib.loads(block)


def test_the_limits_example_is_the_defaults():
    [block] = re.findall(r"```toml\n(.*?)```", section("## [limits]"), re.S)
    assert tomllib.loads(block) == {"limits": asdict(config.Limits())}
