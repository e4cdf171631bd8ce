"""The child's load stages and ``architecture``, as llama-server's child reports them
(server-context.cpp ``load_model``, ``get_res_model_info``): ``text_model``, then
``mmproj_model`` when it has a projector; the ready entry says what it takes in and gives out."""

from __future__ import annotations

from typing import Any

import pytest

from fixtures.tiny_models import ModelsDir
from refimpl.core.protocol import LoadingState, ReadyState

from test_child import deps, running_child  # noqa: F401 - deps is a fixture


@pytest.mark.live
def test_a_child_with_a_projector_reports_both_stages_and_its_image_input(
        deps: Any, tiny_models: ModelsDir) -> None:
    vision = tiny_models["tiny-vision"]
    assert vision.mmproj is not None
    with running_child(vision.path, "--mmproj", str(vision.mmproj)) as child:
        messages = child.until_ready()
    progress = [m.progress for m in messages if isinstance(m, LoadingState) and m.progress]
    assert all(p.stages == ("text_model", "mmproj_model") for p in progress), progress
    assert [p.current for p in progress if p.value == 1.0] == ["text_model", "mmproj_model"]
    assert progress[-1].current == "mmproj_model" and progress[-1].value == 1.0
    ready = messages[-1]
    assert isinstance(ready, ReadyState)
    assert ready.info["architecture"] == {"input_modalities": ["text", "image"],
                                          "output_modalities": ["text"]}


@pytest.mark.live
def test_a_text_model_reports_one_stage_and_text_only(deps: Any, tiny_models: ModelsDir) -> None:
    with running_child(tiny_models["tiny-xs"].path) as child:
        messages = child.until_ready()
    progress = [m.progress for m in messages if isinstance(m, LoadingState) and m.progress]
    assert progress and all(p.stages == ("text_model",) for p in progress)
    assert messages[-1].info["architecture"] == {"input_modalities": ["text"],
                                                 "output_modalities": ["text"]}
