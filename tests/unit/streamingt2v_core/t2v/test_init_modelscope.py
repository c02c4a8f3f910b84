"""Stage 1 (text -> first chunk with the ModelScope T2V UNet) on the tiny models, CPU."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.paths import ORACLE, ROOT

UNET_CONFIG_KEY = "unet_config (hub unet/config.json; used for base_model and, via from_unet, the ControlNet)"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_models")
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_tiny_models.py"), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="module")
def st_model(tiny_models):
    import streamingt2v_core as st

    return st.load_streamingt2v(tiny_models / "streamingt2v" / "tiny_streamingt2v.safetensors")


@pytest.fixture(scope="module")
def unet(tiny_models):
    from streamingt2v_core.t2v.init_modelscope import load_modelscope_unet

    return load_modelscope_unet(tiny_models / "diffusion_models" / "tiny_modelscope_t2v.safetensors")


def tiny_unet_config() -> dict:
    cfg = json.loads((ORACLE / "tiny_config.json").read_text())[UNET_CONFIG_KEY]
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def test_tiny_checkpoint_is_the_oracles(tiny_models):
    from safetensors.torch import load_file

    from tests.support.tiny import content_hash

    state = load_file(tiny_models / "streamingt2v" / "tiny_streamingt2v.safetensors")
    assert content_hash(state) == "d5e57138bf5c45af237b6a115c28875cc9646a9b69ee738d5ccfb9111ded6e5b"
    sidecar = json.loads((tiny_models / "streamingt2v" / "tiny_streamingt2v.json").read_text())
    assert sidecar == json.loads((ORACLE / "tiny_config.json").read_text())


def test_unet_config_from_shapes_alone(tiny_models, tmp_path, unet):
    """Without any config file the architecture (head size included) comes from the tensor shapes."""
    from streamingt2v_core.t2v.init_modelscope import load_modelscope_unet

    lone = tmp_path / "modelscope_unet.safetensors"
    shutil.copyfile(tiny_models / "diffusion_models" / "tiny_modelscope_t2v.safetensors", lone)
    inferred = load_modelscope_unet(lone)
    want = tiny_unet_config()
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
                "cross_attention_dim", "attention_head_dim", "in_channels", "out_channels"):
        assert inferred.config[key] == type(inferred.config[key])(want[key]), key
    for (k, a), (k2, b) in zip(inferred.state_dict().items(), unet.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_diffusers_folder_layout(tiny_models, tmp_path):
    from streamingt2v_core.t2v.init_modelscope import load_modelscope_unet

    folder = tmp_path / "text-to-video-ms" / "unet"
    folder.mkdir(parents=True)
    shutil.copyfile(tiny_models / "diffusion_models" / "tiny_modelscope_t2v.safetensors",
                    folder / "diffusion_pytorch_model.safetensors")
    cfg = dict(tiny_unet_config(), attention_head_dim=8)  # what only a config file can say
    (folder / "config.json").write_text(json.dumps(cfg))
    unet = load_modelscope_unet(tmp_path / "text-to-video-ms")  # the pipeline folder: its unet/ is used
    assert unet.config["attention_head_dim"] == 16  # the shapes (transformer_in) win over a wrong config
    assert list(unet.config["block_out_channels"]) == [64, 128, 192, 192]


def test_wrong_weights_are_named(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    from streamingt2v_core.common.weights import CheckpointError
    from streamingt2v_core.t2v.init_modelscope import load_modelscope_unet

    state = load_file(tiny_models / "diffusion_models" / "tiny_modelscope_t2v.safetensors")
    del state["conv_out.bias"]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_modelscope_unet(tmp_path / "broken.safetensors")
    msg = str(err.value)
    assert "broken.safetensors" in msg and "conv_out.bias" in msg and "extra.weight" in msg
    with pytest.raises(CheckpointError, match="no such file"):
        load_modelscope_unet(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
def test_integer_and_fp8_weights_are_refused(tiny_models, tmp_path, dtype):
    """Before: the loader cast an int8 or fp8 tensor to the compute dtype and ran integers (or 3-bit mantissas)
    as the weights. Now: CheckpointError naming the file, the key and the dtype."""
    from safetensors.torch import load_file, save_file

    from streamingt2v_core.common.weights import CheckpointError
    from streamingt2v_core.t2v.init_modelscope import load_modelscope_unet

    state = load_file(tiny_models / "diffusion_models" / "tiny_modelscope_t2v.safetensors")
    state["conv_in.weight"] = (state["conv_in.weight"] * 8).to(dtype)
    path = tmp_path / "quantised.safetensors"
    save_file(state, path)
    with pytest.raises(CheckpointError) as err:
        load_modelscope_unet(path)
    msg = str(err.value)
    assert str(path) in msg and f"conv_in.weight: found {str(dtype).replace('torch.', '')}" in msg, msg


def test_unreadable_file_names_the_modelscope_fix(tmp_path):
    """Before: a broken file's message ended in the StreamingT2V checkpoint's fix (put streaming_t2v.ckpt ...)."""
    from streamingt2v_core.common.weights import CheckpointError
    from streamingt2v_core.t2v.init_modelscope import load_modelscope_unet

    path = tmp_path / "unet.safetensors"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(CheckpointError) as err:
        load_modelscope_unet(path)
    msg = str(err.value)
    assert str(path) in msg and "text-to-video-ms-1.7b" in msg and "streaming_t2v.ckpt" not in msg, msg


def test_scheduler_is_dpm_solver_pp_order_2(st_model):
    from diffusers import DPMSolverMultistepScheduler

    from streamingt2v_core.t2v.init_modelscope import make_scheduler

    s = make_scheduler(st_model.config.scheduler)
    assert isinstance(s, DPMSolverMultistepScheduler)
    assert s.config.algorithm_type == "dpmsolver++" and s.config.solver_order == 2
    assert s.config.beta_schedule == "scaled_linear" and s.config.beta_start == 0.00085
    s.set_timesteps(50)
    assert s.timesteps[0].item() == 999 and len(s.timesteps) == 50  # linspace spacing, as in diffusers 0.27


def test_first_chunk_equals_diffusers_text_to_video_pipeline(st_model, unet):
    """Our loop against diffusers' own TextToVideoSDPipeline (what the official stage 1 runs), given the
    same text embeddings, UNet, VAE, scheduler and initial latents."""
    from diffusers import TextToVideoSDPipeline

    from streamingt2v_core.t2v.init_modelscope import generate_first_chunk, make_scheduler

    steps, seed = 3, 5
    ours = generate_first_chunk(unet, st_model, "a tiny prompt", steps=steps, guidance=9.0, seed=seed)
    assert ours.shape == (16, 3, 64, 64) and ours.dtype == torch.float32
    assert 0.0 <= ours.min() and ours.max() <= 1.0 and ours.std() > 0.01

    pipe = TextToVideoSDPipeline(vae=st_model.vae, text_encoder=None, tokenizer=None, unet=unet,
                                 scheduler=make_scheduler(st_model.config.scheduler))
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn((1, 4, 16, 8, 8), generator=torch.Generator().manual_seed(seed))
    out = pipe(prompt_embeds=st_model.encode_prompt(["a tiny prompt"]),
               negative_prompt_embeds=st_model.encode_prompt([""]), num_inference_steps=steps,
               guidance_scale=9.0, height=64, width=64, num_frames=16, latents=latents, output_type="pt").frames
    ref = torch.as_tensor(out)[0].float()
    ref = ref if ref.shape[1] == 3 else ref.permute(0, 3, 1, 2)
    assert ref.shape == ours.shape
    assert (ref - ours).abs().max() < 1e-4


def test_seed_and_prompts_change_the_chunk(st_model, unet):
    from streamingt2v_core.t2v.init_modelscope import generate_first_chunk

    a = generate_first_chunk(unet, st_model, "a cat", steps=2, seed=33)
    steps_seen = []
    b = generate_first_chunk(unet, st_model, "a cat", steps=2, seed=33, on_step=lambda s, n: steps_seen.append((s, n)))
    assert torch.equal(a, b) and steps_seen == [(1, 2), (2, 2)]
    assert (a - generate_first_chunk(unet, st_model, "a cat", steps=2, seed=34)).abs().max() > 1e-3
    assert (a - generate_first_chunk(unet, st_model, "a dog", steps=2, seed=33)).abs().max() > 1e-4
    assert (a - generate_first_chunk(unet, st_model, "a cat", "blurry", steps=2, seed=33)).abs().max() > 1e-4
    other = generate_first_chunk(unet, st_model, "a cat", steps=2, seed=33, height=48, width=80)
    assert other.shape == (16, 3, 48, 80)
    with pytest.raises(ValueError, match="multiples of 8"):
        generate_first_chunk(unet, st_model, "a cat", steps=1, height=60)


def test_first_chunk_checks_before_the_loop(st_model, unet, monkeypatch):
    """Frame counts, sizes and a UNet that does not fit the stage-2 model are refused before any encoding."""
    from diffusers import UNet3DConditionModel

    from streamingt2v_core.t2v.init_modelscope import generate_first_chunk

    monkeypatch.setattr(st_model, "encode_prompt", lambda *a, **k: pytest.fail("the prompt was encoded before the check"))
    with pytest.raises(ValueError, match=r"num_frames.*0.*at least 1"):
        generate_first_chunk(unet, st_model, "a cat", steps=1, num_frames=0)
    with pytest.raises(ValueError, match=r"steps.*0.*at least 1"):
        generate_first_chunk(unet, st_model, "a cat", steps=0)
    with pytest.raises(ValueError, match=r"height/width 0x64.*positive"):
        generate_first_chunk(unet, st_model, "a cat", steps=1, height=0)
    other = UNet3DConditionModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                 attention_head_dim=8, norm_num_groups=32,
                                 down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                 up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
    with pytest.raises(ValueError, match=r"unet.*cross_attention_dim 32.*1024"):
        generate_first_chunk(other, st_model, "a cat", steps=1)
