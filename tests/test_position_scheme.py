"""The position-scheme hook: architecture behaviour reaches the core through the spec's adapter,
resolved by `spec.arch` (so a spec read back from JSON has it), with the core's default for an
architecture no adapter registered. The parity of ChatGLM-6B / Llama outputs through it is proven
by the backend tests (test_chatglm_reference, test_step_graph, test_sim_backend, test_serve, …)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ascend_adapt.contract import io_spec
from ascend_adapt.errors import ConfigError
from ascend_adapt.model_zoo import ADAPTERS
from ascend_adapt.runtime.lm_inputs import (DEFAULT_POSITIONS, PositionScheme, PrefillPositions, decode_inputs,
                                            prefill_inputs)
from ascend_adapt.spec import ModelSpec


def _spec(arch: str) -> ModelSpec:
    a = ADAPTERS.get(arch)
    return a.spec_from_config(a.tiny_config())


def test_the_hook_survives_the_json_round_trip_and_defaults_for_unknown_archs():
    glm = ModelSpec.from_dict(_spec("chatglm").to_dict())
    assert glm.position_scheme is ADAPTERS.get("chatglm").position_scheme
    assert glm.position_scheme.name == "glm2d" and glm.position_scheme.shape(3, 5) == [3, 2, 5]
    for arch in ("llama", "qwen2", "chatglm2"):
        assert ModelSpec.from_dict(_spec(arch).to_dict()).position_scheme is DEFAULT_POSITIONS
    stranger = dataclasses.replace(_spec("llama"), arch="written_elsewhere")  # e.g. a manifest from another process
    assert stranger.position_scheme is DEFAULT_POSITIONS


def test_chatglm_scheme_numbers_a_padded_batch_as_the_reference_does():
    """§1.5–1.6: position = index until <sop>, then frozen at [gMASK]; block 0, then 1, 2, …"""
    spec = _spec("chatglm")
    g, s = spec.gmask_token_id, spec.bos_token_id
    ids = np.array([[0, 7, 8, g, s], [7, 8, 9, g, s]])
    mask = np.array([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    step, state = prefill_inputs(spec, ids, mask, max_len=8)
    assert step.positions.tolist() == [[[0, 0, 1, 2, 2], [0, 0, 0, 0, 1]], [[0, 1, 2, 3, 3], [0, 0, 0, 0, 1]]]
    assert state.ctx_end.tolist() == [4, 4] and state.carry.tolist() == [[2], [3]]
    # the context before <sop> is bidirectional: slot 1 (first real token of row 0) sees slot 3
    assert step.visible[0, 1, 3] and not step.visible[0, 4, 5]
    assert decode_inputs(state, [5, 6]).positions.tolist() == [[[2], [2]], [[3], [2]]]
    assert decode_inputs(state, [5, 6]).positions.tolist() == [[[2], [3]], [[3], [3]]]
    assert spec.position_scheme.prompt_suffix(spec) == (g, s)
    with pytest.raises(ConfigError, match="no <sop>"):
        prefill_inputs(spec, np.array([[7, 8, g]]), None, 4)


class _Offset(PositionScheme):
    """A made-up rule: [B, 1, S] positions starting at 100, the first two slots a bidirectional prefix."""

    name, rows = "offset", 1

    def prefill(self, spec, ids, mask):
        base = super().prefill(spec, ids, mask)
        B = ids.shape[0]
        return PrefillPositions(base.positions[:, None] + 100, base.next_pos, np.full(B, 2, np.int64),
                                np.full((B, 1), 100, np.int64))

    def decode(self, next_pos, carry):
        return (next_pos[:, None] + carry)[:, :, None]


@pytest.fixture
def offset_arch():
    class OffsetAdapter(type(ADAPTERS.get("llama"))):
        name = "offset_test"
        position_scheme = _Offset()

    ADAPTERS.register("offset_test", OffsetAdapter())
    yield dataclasses.replace(_spec("llama"), arch="offset_test")
    ADAPTERS.unregister("offset_test")


def test_a_new_scheme_reaches_every_core_user_without_a_core_change(offset_arch):
    spec = offset_arch
    step, state = prefill_inputs(spec, np.array([[4, 5, 6]]), None, max_len=6)
    assert step.positions.tolist() == [[[100, 101, 102]]]
    assert step.visible[0, 0].tolist() == [True, True, False, False, False, False]  # slot 0 sees the prefix
    assert decode_inputs(state, [7]).positions.tolist() == [[[103]]]
    shapes = {n: s for n, s, _ in io_spec(spec, "step", 2, 0, 16)["inputs"]}
    assert shapes["position_ids"] == [2, 1, "seq"]


def test_a_scheme_that_is_not_a_position_scheme_is_refused_naming_the_adapter(offset_arch):
    type(ADAPTERS.get("offset_test")).position_scheme = object()
    with pytest.raises(ConfigError, match="adapter 'offset_test': position_scheme is a object"):
        offset_arch.position_scheme
