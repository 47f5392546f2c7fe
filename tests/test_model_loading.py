"""Issue 26 part 2: every model or tokenizer load of every stage fails in one line naming the setting and the fix
(an ``asset:`` name, a local path, or network access), exit 2, when a hub name cannot be served. There is no hub on
the development machines, so the failure is real; HF_HUB_OFFLINE is set anyway so that no test reaches a network."""

from __future__ import annotations

import pytest

from skill_distill.io import ConfigError

pytestmark = pytest.mark.slow  # the first tokenizer or model load imports most of transformers (5-20 s)

HUB_NAME = "Qwen/Qwen3-4B"


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import


def assert_one_line_naming(error: ConfigError, setting: str, name: str = HUB_NAME) -> None:
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{setting}: cannot load {name!r}")
    assert "asset:qwen3-tokenizer" in message and "local folder" in message and "network" in message


def test_tokenizer_loader_names_the_setting_and_the_fixes(offline, tmp_path):
    from skill_distill.assets import load_tokenizer

    with pytest.raises(ConfigError) as e:
        load_tokenizer(HUB_NAME, "data.tokenizer")
    assert_one_line_naming(e.value, "data.tokenizer")
    assert "hub did not serve it" in str(e.value)
    with pytest.raises(ConfigError) as e:  # a local folder without tokenizer files is named as such
        load_tokenizer(str(tmp_path), "tokenizer")
    assert_one_line_naming(e.value, "tokenizer", str(tmp_path))
    assert "local folder transformers cannot read" in str(e.value)
    assert load_tokenizer("asset:qwen3-tokenizer")("Find m+n.")["input_ids"]  # the offline fix works


def test_a_tokenizer_folder_is_loaded_once_per_process_until_its_files_change(tmp_path, qwen_tokenizer_dir,
                                                                              monkeypatch):
    import json
    import shutil

    from skill_distill import assets

    folder = tmp_path / "tokenizer"
    shutil.copytree(qwen_tokenizer_dir, folder)
    loads = []
    real_load = assets.load_pretrained
    monkeypatch.setattr(assets, "load_pretrained", lambda *a, **k: loads.append(a[1]) or real_load(*a, **k))
    first = assets.load_tokenizer(str(folder))
    assert assets.load_tokenizer(folder) is first and loads == [str(folder)]  # a path or its string: one load
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["model_max_length"] = 1234
    (folder / "tokenizer_config.json").write_text(json.dumps(config))  # edited in place: loaded again
    edited = assets.load_tokenizer(str(folder))
    assert len(loads) == 2 and edited is not first and edited.model_max_length == 1234
    assert edited("Find m+n.")["input_ids"] == first("Find m+n.")["input_ids"]


def test_generation_backends_name_backend_model_before_any_engine(offline):
    from skill_distill.generation.hf_backend import HFBackend

    with pytest.raises(ConfigError) as e:
        HFBackend(HUB_NAME)
    assert_one_line_naming(e.value, "backend.model")
    with pytest.raises(ConfigError) as e:
        HFBackend("asset:tiny-qwen3", tokenizer=HUB_NAME)
    assert_one_line_naming(e.value, "backend.tokenizer")


def test_vllm_backend_checks_a_hub_name_before_starting_the_engine(offline):
    from skill_distill.generation.vllm_backend import VLLMBackend

    with pytest.raises(ConfigError) as e:
        VLLMBackend(HUB_NAME)
    assert_one_line_naming(e.value, "backend.model")


def test_training_model_and_export_skeleton_name_their_setting(offline):
    from lightning_modules.causal_lm import CausalLMModule
    from lightning_modules.sharding import resolve_pretrained_dir
    from skill_distill.export import model_skeleton

    module = CausalLMModule(model=HUB_NAME)
    with pytest.raises(ConfigError) as e:
        module.configure_model()
    assert_one_line_naming(e.value, "model.model")
    with pytest.raises(ConfigError) as e:  # the sharded (FSDP2) path downloads the files first
        resolve_pretrained_dir(HUB_NAME)
    assert_one_line_naming(e.value, "model.model")
    with pytest.raises(ConfigError) as e:
        model_skeleton({"model": HUB_NAME})
    assert_one_line_naming(e.value, "model")
