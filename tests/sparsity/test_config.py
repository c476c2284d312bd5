"""Configs: JSON round trip through the registry, validation, unknown methods."""

from __future__ import annotations

import json

import pytest

from actlab.sparsity.config import (
    CONFIGS,
    CatsConfig,
    CettConfig,
    ChessConfig,
    ComposedConfig,
    TealConfig,
    TopKConfig,
    WinaConfig,
    config_from_dict,
)
from actlab.sparsity.errors import PlanError

CASES = [
    TealConfig(0.5),
    TealConfig(0.3, allocation="greedy", greedy_step=0.1, greedy_tokens=64),
    TealConfig(0.6, allocation="global", fisher_tokens=128),
    TealConfig(0.2, sites=("mlp.down_in", "attn.o_in")),
    WinaConfig(0.4, allocation="global"),
    ChessConfig(0.4, attn_ratio=0.5),
    CatsConfig(0.2),
    TopKConfig(0.5),
    CettConfig(cett=0.15),
    ComposedConfig(parts=(TealConfig(0.2).to_dict(), CettConfig(cett=0.1).to_dict()), sparsity=0.3),
]


@pytest.mark.parametrize("config", CASES, ids=lambda c: c.method)
def test_json_round_trip(config):
    d = json.loads(json.dumps(config.to_dict()))
    assert d["method"] == config.method
    assert config_from_dict(d) == config


def test_every_registered_method_has_a_case():
    assert {c.method for c in CASES} == set(CONFIGS)


def test_knob_is_sparsity_except_cett():
    assert TealConfig(0.5).with_knob(0.2) == TealConfig(0.2)
    assert CettConfig(cett=0.1).with_knob(0.3).cett == 0.3


@pytest.mark.parametrize(
    "d, message",
    [
        ({"method": "nope", "sparsity": 0.5}, "unknown sparsification method 'nope'"),
        ({"method": "teal", "sparsity": 1.5}, "sparsity must be in"),
        ({"method": "teal", "bogus": 1}, "unknown config field"),
        ({"method": "teal", "allocation": "magic"}, "unknown allocation"),
        ({"method": "cats", "allocation": "greedy"}, "unknown config field"),
        ({"sparsity": 0.5}, "'method' name"),
        ({"method": "wina", "sites": ["mlp.up"]}, "unknown site kind"),
    ],
)
def test_invalid_configs_are_plan_errors(d, message):
    with pytest.raises(PlanError, match=message):
        config_from_dict(d)
