"""Seeded fuzz over every weights loader of the pack, with files a user could really have: half downloads,
flipped bytes, deleted, renamed and re-shaped tensors, integer, bool, fp8 and fp16 tensors, empty and random
files, other containers and hostile pickles. Each variant must either load (a valid file, in half precision
too, loads the same weights) or be refused with the pack's one load error, CheckpointError, whose message
names the file, the key at fault where there is one, and a fix; no pickle code may run, nothing may hang.

Loaders: stage 2 (`load_streamingt2v`, the oracle's tiny checkpoint, flat and as a converted folder), the
refiner (`load_refiner`, the tiny MS-Vid2Vid-XL in the official and the converted layout) and the stage-1
ModelScope UNet (`load_modelscope_unet`). The StreamingSVD CAM loader does not exist yet; it joins LOADERS
when it does.

The plan of variants is drawn from SEED at import time (the same ids every run); base files are built once
per module, and each variant writes only the file it changes (the others are symlinked).
"""
from __future__ import annotations

import builtins
import contextlib
import functools
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from streamingt2v_core.common.weights import CheckpointError
from tests.support.paths import ORACLE

SEED = 20261102
TINY_CONFIG = ORACLE / "tiny_config.json"
VARIANT_LIMIT_S = 60  # far above any variant's time here (the slowest, a full stage-2 load, takes seconds)
LOADERS = ("t2v", "modelscope", "refiner_official", "refiner_converted")

# Every fix sentence of the pack's load errors ends or contains one of these.
FIX_PHRASES = ("download it again", "Fix:", "fix the file or delete it", "put the official streaming_t2v.ckpt",
               "give the MS-Vid2Vid-XL folder", "use the ModelScope text-to-video UNet", "convert the official",
               "give the weights file itself")

# The keys each loader reads the architecture off first (the shape inference's inputs).
T2V_CRITICAL = (
    "base_model.conv_in.weight", "base_model.conv_out.weight", "base_model.transformer_in.proj_in.weight",
    "base_model.down_blocks.0.resnets.0.conv2.weight",
    "base_model.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "unet.controlnet_cond_embedding.conv_in.weight", "unet.controlnet_cond_embedding.blocks.1.weight",
    "vae.quant_conv.weight", "vae.encoder.down_blocks.0.resnets.0.conv2.weight",
    "text_encoder.text_model.embeddings.token_embedding.weight",
    "text_encoder.text_model.embeddings.position_embedding.weight",
    "text_encoder.text_model.encoder.layers.0.mlp.fc1.weight",
    "image_encoder.model.visual.conv1.weight", "image_encoder.model.visual.positional_embedding",
    "image_encoder.model.visual.transformer.resblocks.0.mlp.c_fc.weight", "image_encoder.model.visual.proj",
    "image_encoder.model.token_embedding.weight", "image_encoder.model.positional_embedding",
)
MODELSCOPE_CRITICAL = ("conv_in.weight", "conv_out.weight", "transformer_in.proj_in.weight",
                       "down_blocks.0.resnets.0.conv2.weight",
                       "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight")
REFINER_CRITICAL = {  # component -> keys (official names; the converted layout keeps them)
    "unet": ("input_blocks.0.0.weight", "out.2.weight", "input_blocks.0.1.proj_in.weight",
             "input_blocks.1.0.out_layers.3.weight", "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"),
    "text_encoder": ("token_embedding.weight", "positional_embedding"),
    "autoencoder": ("first_stage_model.encoder.conv_in.weight", "first_stage_model.decoder.conv_out.weight",
                    "first_stage_model.decoder.conv_in.weight", "first_stage_model.encoder.down.0.block.0.conv2.weight"),
}

# What a mutation does to one tensor; "load" ones keep the file valid.
SHAPE_MUTATIONS = ("one_element", "scalar", "ones_nd", "twos_nd", "add_dim", "flatten", "grow", "empty_dim")
DTYPE_MUTATIONS = {"int8": torch.int8, "int64": torch.int64, "uint8": torch.uint8, "bool": torch.bool,
                   "fp8": torch.float8_e4m3fn}
KEY_MUTATIONS = ("delete", "rename", "extra")
VALID_MUTATIONS = {"fp16_one": torch.float16, "fp64_one": torch.float64}
REFINER_FORMATS = {"official": {"unet": "pth", "text_encoder": "pth", "autoencoder": "ckpt"},
                   "converted": dict.fromkeys(REFINER_CRITICAL, "safetensors")}
CONTAINERS = ("list", "tensor", "nested", "state_dict_list", "non_string_keys", "hostile_top",
              "hostile_in_state_dict", "hostile_file", "hostile_file_p0", "hostile_zip")


@dataclass(frozen=True)
class Variant:
    loader: str
    kind: str
    target: str = ""  # a key, "pick:N" (the N-th key, modulo), a component, or an offset spec
    expect: str = "refuse"  # "refuse", "load" or "either" (a flipped byte may leave a valid file)
    n: int = 0

    @property
    def id(self) -> str:
        target = self.target.replace("/", "_")
        return f"{self.loader}-{self.n:02d}-{self.kind}" + (f"-{target}" if target else "")


def _plan(seed: int = SEED) -> list[Variant]:
    rng = random.Random(seed)
    out: list[Variant] = []

    def add(loader, kind, target="", expect="refuse"):
        out.append(Variant(loader, kind, target, expect, len(out)))

    def mutation_kind():
        return rng.choice(SHAPE_MUTATIONS + tuple(DTYPE_MUTATIONS) + KEY_MUTATIONS)

    def pick():
        return f"pick:{rng.randrange(10**6)}"

    def file_level(loader, n_cut, n_flip, safetensors: bool):
        add(loader, "empty")
        add(loader, "random", str(rng.randrange(1, 4096)))
        cuts = ["last", f"head:{rng.randrange(8)}"] if safetensors else ["last"]
        while len(cuts) < n_cut:
            region = rng.choice(("header", "data")) if safetensors else "frac"
            cuts.append(f"{region}:{rng.random():.4f}")
        for cut in cuts:
            add(loader, "truncate", cut)
        for _ in range(n_flip):
            where = rng.choice(("len", "header", "header")) if safetensors else "frac"
            spot = rng.randrange(8) if where == "len" else round(rng.random(), 4)
            add(loader, "flip", f"{where}:{spot}:{rng.randrange(8)}", "either")

    # stage 2: valid files, the two cases, the keys shape inference reads, random keys and kinds
    add("t2v", "valid", expect="load")
    add("t2v", "fp16_all", expect="load")
    add("t2v", "one_element", "base_model.conv_in.weight")
    add("t2v", "int8", "base_model.conv_in.weight")
    for key in rng.sample(T2V_CRITICAL[1:], 7):
        add("t2v", mutation_kind(), key)
    for _ in range(2):
        add("t2v", mutation_kind(), pick())
    for kind, expect in (("fp16_one", "load"), ("fp8", "refuse"), ("bool", "refuse")):
        add("t2v", kind, pick(), expect)
    file_level("t2v", 4, 2, safetensors=True)
    add("t2v", "lightning_extras", expect="load")  # hostile callbacks in a list beside the valid state_dict
    add("t2v", "truncate_ckpt", f"frac:{rng.random():.4f}")
    for kind in CONTAINERS:
        add("t2v", kind)
    for kind in ("sidecar_list", "sidecar_json", "sidecar_types"):
        add("t2v", kind)

    add("modelscope", "valid", expect="load")
    add("modelscope", "fp16_all", expect="load")
    add("modelscope", "one_element", "conv_in.weight")
    add("modelscope", "int8", "conv_in.weight")
    for key in rng.sample(MODELSCOPE_CRITICAL[1:], 3):
        add("modelscope", mutation_kind(), key)
    for _ in range(2):
        add("modelscope", mutation_kind(), pick())
    add("modelscope", "fp8", pick())
    file_level("modelscope", 3, 1, safetensors=True)
    add("modelscope", "lightning_extras", expect="load")
    for kind in ("hostile_file", "hostile_in_state_dict", "nested", "sidecar_list"):
        add("modelscope", kind)

    for loader in ("refiner_official", "refiner_converted"):
        official = loader == "refiner_official"
        add(loader, "valid", expect="load")
        add(loader, "fp16_all", expect="load")
        add(loader, "one_element", "unet/input_blocks.0.0.weight")
        add(loader, "int8", "unet/" + rng.choice(REFINER_CRITICAL["unet"]))
        for key in rng.sample(REFINER_CRITICAL["unet"][1:], 3):
            add(loader, mutation_kind(), f"unet/{key}")
        for key in rng.sample(REFINER_CRITICAL["autoencoder"], 2):  # missing VAE keys get diffusers' names
            add(loader, rng.choice(SHAPE_MUTATIONS + tuple(DTYPE_MUTATIONS)), f"autoencoder/{key}")
        add(loader, rng.choice(SHAPE_MUTATIONS), "text_encoder/" + rng.choice(REFINER_CRITICAL["text_encoder"]))
        for _ in range(2):
            add(loader, mutation_kind(), f"unet/{pick()}")
        add(loader, rng.choice(tuple(DTYPE_MUTATIONS)), f"autoencoder/{pick()}")
        file_level(loader, 3 if official else 4, 1, safetensors=not official)
        if official:
            add(loader, "lightning_extras", expect="load")
            for kind in CONTAINERS[5:]:  # the hostile ones (the others are the stage-2 loader's, same reader)
                add(loader, kind)  # given as a single .ckpt, as a user might
            add(loader, "hostile_vae_ckpt")  # the autoencoder .ckpt of the folder, hostile inside state_dict
        add(loader, "sidecar_list")
    return out


VARIANTS = _plan()


def test_plan_is_seeded_large_and_covers_every_kind():
    assert _plan() == VARIANTS  # the same variants every run
    assert len(VARIANTS) >= 60
    kinds = {v.kind for v in VARIANTS}
    assert {"truncate", "flip", "empty", "random", "delete", "rename", "one_element", "fp8", "fp16_all",
            "hostile_top", "hostile_in_state_dict", "lightning_extras", "hostile_file", "list", "tensor",
            "nested"} <= kinds
    assert kinds & set(DTYPE_MUTATIONS) >= {"int8", "bool"}
    assert {v.loader for v in VARIANTS} == set(LOADERS)


# ------------------------------------------------------------------------------------------- hostile pickles


class _Hostile:
    """Unpickling this with plain pickle calls `func(*args)`, as a malicious checkpoint does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostiles(marker: Path) -> list:
    return [_Hostile(os.system, f"touch {marker}"), _Hostile(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
            _Hostile(subprocess.call, ["touch", str(marker)])]


# ------------------------------------------------------------------------------------------------- bases


def _copy_prefix(src: Path, dst: Path, n: int) -> None:
    with open(src, "rb") as f, open(dst, "wb") as g:
        left = n
        while left > 0:
            done = os.copy_file_range(f.fileno(), g.fileno(), left)
            if done == 0:
                break
            left -= done


def _save(state: dict, path: Path, fmt: str) -> Path:
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "ckpt":
        torch.save({"state_dict": state}, path)
    else:
        torch.save(state, path)
    return path


class Bases:
    """The valid files every variant starts from, each built once per module."""

    def __init__(self, root: Path, tiny_ckpt: Path):
        self.root, self.tiny_ckpt = root, tiny_ckpt

    @functools.cached_property
    def t2v_state(self) -> dict:
        return load_file(str(self.tiny_ckpt))

    @functools.cached_property
    def t2v_folder(self) -> Path:
        """The tiny checkpoint as a folder of converted components (what `convert` writes, in fp32)."""
        from streamingt2v_core.t2v.weights import COMPONENT_PREFIXES

        folder = self.root / "t2v_folder"
        folder.mkdir()
        for prefix in COMPONENT_PREFIXES:
            part = {k[len(prefix) + 1:]: v for k, v in self.t2v_state.items() if k.startswith(prefix + ".")}
            save_file(part, str(folder / f"{prefix}.safetensors"))
        shutil.copyfile(TINY_CONFIG, folder / "config.json")
        return folder

    @functools.cached_property
    def t2v_lightning(self) -> Path:
        """A Lightning-style .ckpt: the valid state_dict beside hostile callbacks in a list."""
        path = self.root / "t2v_lightning" / "streaming_t2v.ckpt"
        path.parent.mkdir()
        (self.root / "markers_base").mkdir()
        torch.save({"epoch": 3, "state_dict": self.t2v_state,
                    "callbacks": _hostiles(self.root / "markers_base" / "pwned")}, path)
        return path

    @functools.cached_property
    def modelscope_path(self) -> Path:
        from tools import make_tiny_models

        return Path(make_tiny_models.write_modelscope_unet(str(self.root / "modelscope")))

    @functools.cached_property
    def modelscope_state(self) -> dict:
        return load_file(str(self.modelscope_path))

    def refiner_folder(self, layout: str) -> Path:
        return self._refiner_folders[layout]

    @functools.cached_property
    def refiner_states(self) -> dict:
        """The tiny refiner's three components, drawn once (tools/make_tiny_refiner.py's rule)."""
        from tools import make_tiny_refiner

        return {c: make_tiny_refiner.tiny_component(c) for c in REFINER_CRITICAL}

    @functools.cached_property
    def _refiner_folders(self) -> dict:
        """Both layouts as tools/make_tiny_refiner.write lays them out, from the one draw."""
        from tools import make_tiny_refiner

        folders = {}
        for layout, files in (("official", make_tiny_refiner.OFFICIAL_FILES),
                              ("converted", make_tiny_refiner.CONVERTED_FILES)):
            folder = folders[layout] = self.root / f"refiner_{layout}"
            folder.mkdir()
            for component, state in self.refiner_states.items():
                _save(state, folder / files[component], REFINER_FORMATS[layout][component])
            shutil.copyfile(make_tiny_refiner.DATA / "tiny_v2v_config.json", folder / "tiny_v2v_config.json")
        return folders

    @functools.cached_property
    def refiner_reference(self):
        from streamingt2v_core.enhancers.load import load_refiner

        return load_refiner(self.refiner_folder("converted"))


@pytest.fixture(scope="module")
def bases(tmp_path_factory, tiny_ckpt) -> Bases:
    return Bases(tmp_path_factory.mktemp("fuzz_bases"), tiny_ckpt)


# ------------------------------------------------------------------------------------------ building a case


@dataclass
class Case:
    load: object  # () -> the loaded model
    where: Path  # what the message must name (the file, or the folder it is in)
    names: tuple = ()  # any of these (the key at fault, under the names the loader may use) must be named
    dtype: str = ""  # the dtype found, to be named
    check: object = None  # (model) -> None, for a variant that must load


def _resolve(key: str, state: dict) -> str:
    if key.startswith("pick:"):
        keys = sorted(state)
        return keys[int(key[5:]) % len(keys)]
    assert key in state, f"{key} is not in the base file"
    return key


def _mutate(state: dict, kind: str, key: str) -> tuple[dict, tuple]:
    """A copy of `state` with `kind` done to `key`; returns it and the names the error should use."""
    out = dict(state)
    t = state[key]
    names = (key,)
    if kind == "delete":
        del out[key]
    elif kind == "rename":
        new = key[:-len("weight")] + "weights" if key.endswith("weight") else key + "_renamed"
        out[new] = out.pop(key)
        names = (key, new)
    elif kind == "extra":
        out[key + "_extra"] = torch.zeros(3)
        names = (key + "_extra",)
    elif kind == "one_element":
        out[key] = torch.ones(1)
    elif kind == "scalar":
        out[key] = torch.tensor(0.5)
    elif kind in ("ones_nd", "twos_nd"):  # the right number of dims, sizes 1 (a 1-element tensor) or 2
        out[key] = torch.ones((1 if kind == "ones_nd" else 2,) * max(t.ndim, 1))
    elif kind == "add_dim":
        out[key] = t[None].clone()
    elif kind == "flatten":
        out[key] = t.reshape(-1).clone() if t.ndim != 1 else t.reshape(1, -1).clone()
    elif kind == "grow":
        shape = list(t.shape) or [1]
        shape[-1] += 1
        out[key] = torch.zeros(shape)
    elif kind == "empty_dim":
        out[key] = torch.zeros((0,) + tuple(t.shape[1:]))
    elif kind in DTYPE_MUTATIONS:
        dtype = DTYPE_MUTATIONS[kind]
        out[key] = (t > 0) if dtype == torch.bool else (t * 8).clamp(-100, 100).to(dtype)
    elif kind in VALID_MUTATIONS:
        out[key] = t.to(VALID_MUTATIONS[kind])
    else:
        raise AssertionError(kind)
    return out, names


def _file_variant(v: Variant, base: Path, dst: Path, rng: random.Random) -> Path:
    """empty / random / truncate / flip applied to a copy of `base`."""
    size = base.stat().st_size
    if v.kind == "empty":
        dst.write_bytes(b"")
        return dst
    if v.kind == "random":
        dst.write_bytes(rng.randbytes(int(v.target)))
        return dst
    header = int.from_bytes(base.open("rb").read(8), "little") if base.suffix == ".safetensors" else 0
    region, _, rest = v.target.partition(":")
    if v.kind.startswith("truncate"):
        if region == "last":
            n = size - 1
        elif region == "head":
            n = int(rest)
        elif region == "header":
            n = 8 + int(float(rest) * header)
        elif region == "data":
            n = 8 + header + int(float(rest) * (size - 8 - header))
        else:
            n = int(float(rest) * size)
        _copy_prefix(base, dst, max(1, min(n, size - 1)))
        return dst
    spot, _, bit = rest.partition(":")
    pos = {"len": lambda: int(spot), "header": lambda: 8 + int(float(spot) * (header - 1)),
           "frac": lambda: int(float(spot) * (size - 1))}[region]()
    shutil.copyfile(base, dst)
    with open(dst, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ (1 << int(bit))]))
    return dst


def _container(kind: str, dst: Path, marker: Path, tensor_state: dict) -> Path:
    """A pickle that is not a usable checkpoint (or a hostile one); `tensor_state` a few real tensors."""
    evil = _hostiles(marker)
    t = next(iter(tensor_state.values()))
    if kind in ("hostile_file", "hostile_file_p0"):
        dst.write_bytes(pickle.dumps(evil[0], protocol=2 if kind == "hostile_file" else 0))
        return dst
    obj = {
        "list": [t, t],
        "tensor": t,
        "nested": {"model": {"weights": tensor_state}, "epoch": 1},
        "state_dict_list": {"state_dict": [t]},
        "non_string_keys": {0: t, 1: t},
        "hostile_top": evil[1],
        "hostile_in_state_dict": {"state_dict": dict(tensor_state, evil=evil[0])},
        "hostile_zip": {"state_dict": tensor_state, "loops": [[evil[2]]], "hyper_parameters": evil[0]},
    }[kind]
    torch.save(obj, dst)
    return dst


def _same_weights(loaded: dict, reference: dict, rounding=None, rename=None) -> None:
    """Every reference tensor is in `loaded` with the same values (after `rounding`, e.g. to fp16 and back)."""
    for key, ref in reference.items():
        name = rename(key) if rename else key
        if name is None:
            continue
        want = ref.to(rounding).float() if rounding is not None else ref.float()
        got = loaded[name]
        assert got.dtype == torch.float32, f"{name}: loaded as {got.dtype}"
        assert torch.equal(got, want), f"{name}: values differ from the file's"


def _t2v_case(v: Variant, bases: Bases, tmp: Path, rng: random.Random, marker: Path) -> Case:
    import streamingt2v_core as st
    from streamingt2v_core.t2v.config import DROPPED_KEYS

    def load(path, config=TINY_CONFIG):
        return lambda: st.load_streamingt2v(str(path), config=config)

    state = bases.t2v_state

    def check(rounding=None, reference=None):
        def run(model):
            _same_weights(model.state_dict(), reference or state, rounding,
                          rename=lambda k: None if k in DROPPED_KEYS else k)
        return run

    flat = tmp / "streaming_t2v.safetensors"
    if v.kind == "valid":
        flat.symlink_to(bases.tiny_ckpt)
        return Case(load(flat), flat, check=check())
    if v.kind == "fp16_all":
        _save({k: t.half() for k, t in state.items()}, flat, "safetensors")
        return Case(load(flat), flat, check=check(torch.float16))
    if v.kind == "lightning_extras":
        return Case(load(bases.t2v_lightning), bases.t2v_lightning, check=check())
    if v.kind == "truncate_ckpt":
        path = _file_variant(Variant("t2v", "truncate", v.target), bases.t2v_lightning, tmp / "cut.ckpt", rng)
        return Case(load(path), path)
    if v.kind in ("empty", "random", "truncate", "flip"):
        return Case(load(_file_variant(v, bases.tiny_ckpt, flat, rng)), flat)
    if v.kind in CONTAINERS:
        path = _container(v.kind, tmp / "streaming_t2v.ckpt", marker,
                          {k: state[k] for k in ("base_model.conv_in.weight", "vae.quant_conv.weight")})
        return Case(load(path), path)
    if v.kind.startswith("sidecar"):
        flat.symlink_to(bases.tiny_ckpt)
        sidecar = flat.with_suffix(".json")
        sidecar.write_text({"sidecar_list": "[1, 2]", "sidecar_json": '{"unet_config": ',
                            "sidecar_types": '{"unet_config": [1, 2], "inference_params_overrides": 7}'}[v.kind])
        return Case(load(flat, None), sidecar)
    key = _resolve(v.target, state)
    mutated, names = _mutate(state, v.kind, key)
    dtype = str(DTYPE_MUTATIONS[v.kind]).replace("torch.", "") if v.kind in DTYPE_MUTATIONS else ""
    expect_check = check(reference=mutated) if v.kind in VALID_MUTATIONS else None
    prefix = key.split(".", 1)[0]
    if key == "base_model.conv_in.weight":  # the cases, in the flat file as a user has it
        _save(mutated, flat, "safetensors")
        return Case(load(flat), flat, names, dtype, expect_check)
    # other components: the converted folder with only that component rewritten (the rest symlinked)
    folder = tmp / "converted"
    folder.mkdir()
    for f in bases.t2v_folder.iterdir():
        if f.name != f"{prefix}.safetensors":
            (folder / f.name).symlink_to(f)
    part = {k[len(prefix) + 1:]: t for k, t in mutated.items() if k.startswith(prefix + ".")}
    _save(part, folder / f"{prefix}.safetensors", "safetensors")
    return Case(load(folder), folder, names, dtype, expect_check)


def _modelscope_case(v: Variant, bases: Bases, tmp: Path, rng: random.Random, marker: Path) -> Case:
    from streamingt2v_core.t2v.init_modelscope import load_modelscope_unet

    state = bases.modelscope_state
    flat = tmp / "modelscope_unet.safetensors"

    def check(rounding=None, reference=None):
        return lambda unet: _same_weights(unet.state_dict(), reference or state, rounding)

    def load(path):
        return lambda: load_modelscope_unet(path)

    if v.kind == "valid":
        flat.symlink_to(bases.modelscope_path)
        return Case(load(flat), flat, check=check())
    if v.kind == "fp16_all":
        _save({k: t.half() for k, t in state.items()}, flat, "safetensors")
        return Case(load(flat), flat, check=check(torch.float16))
    if v.kind == "lightning_extras":
        path = tmp / "modelscope_unet.ckpt"
        torch.save({"state_dict": state, "callbacks": [_hostiles(marker)]}, path)
        return Case(load(path), path, check=check())
    if v.kind in ("empty", "random", "truncate", "flip"):
        return Case(load(_file_variant(v, bases.modelscope_path, flat, rng)), flat)
    if v.kind in CONTAINERS:
        path = _container(v.kind, tmp / "modelscope_unet.bin", marker, {"conv_in.weight": state["conv_in.weight"]})
        return Case(load(path), path)
    if v.kind == "sidecar_list":
        flat.symlink_to(bases.modelscope_path)
        flat.with_suffix(".json").write_text("[4, 4]")
        return Case(load(flat), flat.with_suffix(".json"))
    key = _resolve(v.target, state)
    mutated, names = _mutate(state, v.kind, key)
    dtype = str(DTYPE_MUTATIONS[v.kind]).replace("torch.", "") if v.kind in DTYPE_MUTATIONS else ""
    _save(mutated, flat, "safetensors")
    flat.with_suffix(".json").symlink_to(bases.modelscope_path.with_suffix(".json"))  # its config, as shipped
    return Case(load(flat), flat, names, dtype, check(reference=mutated) if v.kind in VALID_MUTATIONS else None)


def _refiner_case(v: Variant, bases: Bases, tmp: Path, rng: random.Random, marker: Path) -> Case:
    from streamingt2v_core.enhancers.load import load_refiner
    from streamingt2v_core.enhancers.ms_vid2vid.keys import official_to_diffusers_key
    from tools import make_tiny_refiner

    layout = "official" if v.loader == "refiner_official" else "converted"
    files = make_tiny_refiner.OFFICIAL_FILES if layout == "official" else make_tiny_refiner.CONVERTED_FILES
    fmt = REFINER_FORMATS[layout]
    base = bases.refiner_folder(layout)
    folder = tmp / "refiner"
    folder.mkdir()

    def link(*components, config=True):
        # only what the variant needs: the text encoder (the largest file, and slow to build) mostly stays out
        for component in components:
            (folder / files[component]).symlink_to(base / files[component])
        if config:
            (folder / "tiny_v2v_config.json").symlink_to(base / "tiny_v2v_config.json")

    def load(source):
        return lambda: load_refiner(source)

    def check(parts, rounding=None):
        ref = bases.refiner_reference

        def run(model):
            for part in parts:
                assert getattr(model, part) is not None, f"{part} not loaded"
                _same_weights(getattr(model, part).state_dict(), getattr(ref, part).state_dict(), rounding)
        return run

    if v.kind == "valid":
        link(*files)
        return Case(load(folder), folder, check=check(("unet", "text_encoder", "vae")))
    if v.kind == "fp16_all":  # the official layout with its text encoder too, the converted one without
        parts = tuple(files) if layout == "official" else ("unet", "autoencoder")
        for component in parts:
            _save({k: t.half() for k, t in bases.refiner_states[component].items()}, folder / files[component],
                  fmt[component])
        link()
        return Case(load(folder), folder,
                    check=check([{"autoencoder": "vae"}.get(p, p) for p in parts], torch.float16))
    if v.kind == "lightning_extras":
        path = tmp / "refiner_unet.ckpt"
        torch.save({"state_dict": bases.refiner_states["unet"], "callbacks": [_hostiles(marker)]}, path)
        return Case(load(path), path, check=check(("unet",)))
    if v.kind in ("empty", "random", "truncate", "flip"):
        link()
        _file_variant(v, base / files["unet"], folder / files["unet"], rng)
        return Case(load(folder), folder / files["unet"])
    if v.kind in CONTAINERS:  # the UNet file alone, as a single .ckpt
        path = _container(v.kind, tmp / "refiner_unet.ckpt", marker,
                          {k: bases.refiner_states["unet"][k] for k in REFINER_CRITICAL["unet"][:2]})
        return Case(load(path), path)
    if v.kind == "hostile_vae_ckpt":
        link("unet")
        vae = dict(bases.refiner_states["autoencoder"], evil=_hostiles(marker)[0])
        torch.save({"state_dict": vae}, folder / files["autoencoder"])
        return Case(load(folder), folder / files["autoencoder"], ("evil",))
    if v.kind == "sidecar_list":
        link("unet", config=False)
        (folder / "tiny_v2v_config.json").write_text("[1]")
        return Case(load(folder), folder / "tiny_v2v_config.json")
    component, _, key = v.target.partition("/")
    state = bases.refiner_states[component]
    key = _resolve(key, state)
    mutated, names = _mutate(state, v.kind, key)
    aliases = set(names)
    for name in names:  # the loader may name a UNet key by its diffusers name, a VAE key without its prefix
        if component == "unet":
            with contextlib.suppress(KeyError):
                aliases.add(official_to_diffusers_key(name))
        if component == "autoencoder":
            aliases.add(name.split("first_stage_model.", 1)[-1])
    dtype = str(DTYPE_MUTATIONS[v.kind]).replace("torch.", "") if v.kind in DTYPE_MUTATIONS else ""
    if component != "unet":
        link("unet")
    _save(mutated, folder / files[component], fmt[component])
    return Case(load(folder), folder / files[component], tuple(sorted(aliases)), dtype)


BUILDERS = {"t2v": _t2v_case, "modelscope": _modelscope_case, "refiner_official": _refiner_case,
            "refiner_converted": _refiner_case}


@contextlib.contextmanager
def _time_limit(seconds: int, what: str):
    def expired(signum, frame):
        raise TimeoutError(f"{what}: still loading after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_loader_fuzz(variant: Variant, bases: Bases, tmp_path):
    rng = random.Random(f"{SEED}/{variant.id}")
    markers = tmp_path / "markers"
    markers.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    try:
        case = BUILDERS[variant.loader](variant, bases, work, rng, markers / "pwned")
        start = time.monotonic()
        with _time_limit(VARIANT_LIMIT_S, variant.id):
            try:
                model = case.load()
            except CheckpointError as err:
                msg = str(err)
                assert variant.expect != "load", f"a valid file was refused: {msg}"
                assert str(case.where) in msg, f"the message does not name {case.where}: {msg}"
                if case.names:
                    assert any(n in msg for n in case.names), f"the message names none of {case.names}: {msg}"
                if case.dtype:
                    assert case.dtype in msg, f"the message does not name the dtype {case.dtype}: {msg}"
                assert any(p in msg for p in FIX_PHRASES), f"the message names no fix: {msg}"
            else:
                assert variant.expect != "refuse", "a file that must be refused loaded"
                if case.check is not None:
                    case.check(model)
                del model
        assert time.monotonic() - start < VARIANT_LIMIT_S
        assert not any(markers.iterdir()), "code in a pickle ran"
        assert not any((bases.root / "markers_base").glob("*")) if (bases.root / "markers_base").exists() else True
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the stage-2 variants are 0.2-0.4 GB each
