"""The child's load stages and ``architecture``, as llama-server's child reports them
(server-context.cpp ``load_model``, ``get_res_model_info``): ``text_model``, then ``spec_model``
when a draft model is given, then ``mmproj_model`` when it has a projector, announced first by
the bare ``{"stage": "mmproj_model"}``; the ready entry says what it takes in and gives out."""

from __future__ import annotations

from typing import Any

import pytest

from fixtures.tiny_models import ModelsDir
from refimpl.core.protocol import LoadingState, Progress, ReadyState, StageStarted

from test_child import deps, running_child  # noqa: F401 - deps is a fixture


@pytest.mark.live
def test_a_child_with_a_projector_reports_both_stages_and_its_image_input(
        deps: Any, tiny_models: ModelsDir) -> None:
    vision = tiny_models["tiny-vision"]
    assert vision.mmproj is not None
    with running_child(vision.path, "--mmproj", str(vision.mmproj)) as child:
        messages = child.until_ready()
    said = [m.progress for m in messages if isinstance(m, LoadingState) and m.progress]
    bare = said.index(StageStarted("mmproj_model"))
    assert said[bare + 1] == Progress(("text_model", "mmproj_model"), "mmproj_model", 0.0)
    progress = [p for p in said if isinstance(p, Progress)]
    assert len(progress) == len(said) - 1, said
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
    assert progress and all(isinstance(p, Progress) and p.stages == ("text_model",)
                            for p in progress)
    assert messages[-1].info["architecture"] == {"input_modalities": ["text"],
                                                 "output_modalities": ["text"]}


@pytest.mark.live
def test_a_draft_model_adds_its_stage_between_the_text_and_the_projector(
        deps: Any, tiny_models: ModelsDir) -> None:
    """With a draft model given (``-md``: accepted, not loaded here) the stages are those of
    llama-server's child: ``spec_model`` starts and ends after ``text_model``, before the
    projector's bare stage."""
    vision = tiny_models["tiny-vision"]
    assert vision.mmproj is not None
    with running_child(vision.path, "--mmproj", str(vision.mmproj),
                       "-md", str(tiny_models["tiny-xs"].path)) as child:
        messages = child.until_ready()
    said = [m.progress for m in messages if isinstance(m, LoadingState) and m.progress]
    stages = ("text_model", "spec_model", "mmproj_model")
    assert said[0] == Progress(stages, "text_model", 0.0), said
    first_spec = next(i for i, p in enumerate(said)
                      if isinstance(p, Progress) and p.current == "spec_model")
    assert said[first_spec - 1] == Progress(stages, "text_model", 1.0), said
    assert said[first_spec:] == [
        Progress(stages, "spec_model", 0.0), Progress(stages, "spec_model", 1.0),
        StageStarted("mmproj_model"),
        Progress(stages, "mmproj_model", 0.0), Progress(stages, "mmproj_model", 1.0)], said
