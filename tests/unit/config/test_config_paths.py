"""The recipe check (`missing_paths`, run by launchers/train.py and `python -m ard_scale.config` before any rank
starts) refuses a teacher, T5 or VAE folder that exists but lacks the files its loader reads, naming the key and the
files, and takes the folder layouts the loaders take (a model folder, or a pipeline folder's subfolder)."""

import json
import shutil

import pytest

from ard_scale.config import ConfigError, load_config
from ard_scale.config.data import DataConfig
from ard_scale.config.paths import missing_paths
from ard_scale.data.bundled import resolve_data_path

RECIPE = "recipes/tiny_t2i_cpu.yaml"


def recipe_with(teacher, t5, vae):
    return load_config(
        RECIPE,
        [f"teacher.path={teacher}", "teacher.size=null", f"text_encoder.path={t5}", "text_encoder.size=null",
         f"vae.path={vae}", "vae.size=null"],
    )  # fmt: skip


def shard_index(folder, name, shards, *, present=None):
    """A sharded checkpoint's index naming `shards` (two tensors each), with the shards in `present` (default all)."""
    weight_map = {f"layer{i}.{p}": shard for i, shard in enumerate(shards) for p in ("weight", "bias")}
    (folder / name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for shard in shards if present is None else present:
        (folder / shard).write_bytes(b"")


def model_folders(tmp_path):
    """Teacher, T5 and VAE folders with their configs and tokenizer, no weights."""
    folders = [tmp_path / name for name in ("teacher", "t5", "vae")]
    for folder in folders:
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    (tmp_path / "t5" / "tokenizer_config.json").write_text("{}")
    return folders


def test_folders_without_their_weights_are_named_with_the_fix(tmp_path):
    teacher, t5, vae = model_folders(tmp_path)
    shards = [f"diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    shard_index(teacher, "diffusion_pytorch_model.safetensors.index.json", shards, present=shards[:1])
    (vae / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    problems = missing_paths(recipe_with(teacher, t5, vae))
    assert problems == [
        f"teacher.path: {teacher} lacks 2 of the 3 weight shards diffusion_pytorch_model.safetensors.index.json lists "
        f"({shards[1]}, {shards[2]}): an unfinished copy? Copy the missing files",
        f"text_encoder.path: {t5} holds no model weights; copy the weights (model.safetensors, or its shards and their "
        ".index.json) beside config.json",
        f"vae.path: {vae} holds no model weights; it has diffusion_pytorch_model.fp16.safetensors, a variant the "
        "loader does not read: rename it to diffusion_pytorch_model.safetensors",
    ]


def test_a_garbled_shard_index_is_named(tmp_path):
    teacher, t5, vae = model_folders(tmp_path)
    (teacher / "diffusion_pytorch_model.safetensors.index.json").write_text('{"weight_map": ')
    (t5 / "model.safetensors").write_bytes(b"")
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    [problem] = missing_paths(recipe_with(teacher, t5, vae))
    assert problem.startswith(
        f"teacher.path: {teacher / 'diffusion_pytorch_model.safetensors.index.json'} is not a readable shard index"
    )


def test_folders_without_their_model_files_are_named_with_what_they_lack(tmp_path):
    for name in ("teacher", "t5", "vae"):
        (tmp_path / name).mkdir()
    (tmp_path / "t5" / "config.json").write_text("{}")  # the model's config, but no tokenizer
    problems = missing_paths(recipe_with(tmp_path / "teacher", tmp_path / "t5", tmp_path / "vae"))
    assert problems == [
        f"teacher.path: {tmp_path / 'teacher'} is not a diffusers model folder: it has no config.json (nor "
        "transformer/config.json)",
        f"text_encoder.path: T5 folder '{tmp_path / 't5'}' lacks model or tokenizer files ['tokenizer_config.json']; "
        "save both with save_pretrained (a pipeline's text_encoder_N/ may keep its tokenizer in the sibling "
        "tokenizer_N/)",
        f"vae.path: {tmp_path / 'vae'} is not a diffusers AutoencoderKL folder (no config.json, nor vae/config.json); "
        "give the VAE's local folder",
    ]


@pytest.mark.parametrize("layout", ["model folders", "pipeline folder"])
def test_the_loaders_folder_layouts_pass(tmp_path, layout):
    pipe = tmp_path / "pipe"
    teacher, vae = (pipe / "transformer", pipe / "vae") if layout == "pipeline folder" else (pipe / "t", pipe / "v")
    t5 = tmp_path / "t5"
    for folder in (teacher, vae, t5):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    (t5 / "tokenizer_config.json").write_text("{}")
    (teacher / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (vae / "diffusion_pytorch_model.bin").write_bytes(b"")  # the older name diffusers still reads
    shard_index(
        t5, "model.safetensors.index.json", ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    )
    given = (pipe, pipe) if layout == "pipeline folder" else (teacher, vae)
    assert missing_paths(recipe_with(given[0], t5, given[1])) == []


def test_a_folder_of_another_model_kind_is_named_with_what_it_holds(tmp_path):
    """A CLIP folder given as T5 loaded as a randomly initialised T5 (transformers' "newly initialized" warning only)
    and a T5 folder given as teacher was said to hold no weights: each is named with what its config.json says."""
    from ard_scale.models.text_encoder import build_clip, build_t5, load_t5

    for name, (model, tokenizer) in (("clip", build_clip("debug")), ("t5", build_t5("debug"))):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    clip, t5 = str(tmp_path / "clip"), str(tmp_path / "t5")
    cfg = load_config(RECIPE, [f"text_encoder.path={clip}", "text_encoder.size=null"])
    wrong_t5 = (
        f"T5 folder {clip!r} holds a clip_text_model model (CLIPTextModel), not a T5 encoder (model_type 't5'); give "
        "a T5 encoder's folder (or a pipeline folder that keeps it in text_encoder/)"
    )
    assert missing_paths(cfg) == [f"text_encoder.path: {wrong_t5}"]
    with pytest.raises(ValueError) as refused:  # the loader (precompute_text.py --t5, the trainer) refuses it too
        load_t5(clip)
    assert str(refused.value) == wrong_t5
    cfg = load_config(RECIPE, [f"teacher.path={t5}", "teacher.size=null"])
    assert missing_paths(cfg) == [
        f"teacher.path: {t5} holds a t5 model (T5EncoderModel), not a diffusers transformer; give the teacher's "
        "diffusers model or pipeline folder"
    ]
    cfg = load_config("recipes/tiny_flux_cpu.yaml", [f"pooled_encoder.path={t5}", "pooled_encoder.size=null"])
    assert missing_paths(cfg) == [
        f"pooled_encoder.path: {t5!r} holds a t5 model (T5EncoderModel), not a CLIP text encoder (model_type "
        "'clip_text_model'); give a CLIP text encoder's folder (or a pipeline folder that keeps it in text_encoder/)"
    ]


def encoder_folder(folder, *, tokenizer=True, weights="model.safetensors"):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if tokenizer:
        (folder / "tokenizer_config.json").write_text("{}")
    if weights:
        (folder / weights).write_bytes(b"")
    return folder


def test_the_qwen_encoder_folder_is_checked(tmp_path):
    """qwen_encoder.path was not checked at all: a missing Qwen2.5-VL folder failed on every rank after start-up."""
    cfg = load_config(
        "recipes/tiny_qwen_image_cpu.yaml", [f"qwen_encoder.path={tmp_path / 'qwen'}", "qwen_encoder.size=null"]
    )
    assert missing_paths(cfg) == [
        f"qwen_encoder.path: {str(tmp_path / 'qwen')!r} is not an existing folder (Qwen2.5-VL and its tokenizer, or "
        "the pipeline folder)"
    ]
    pipe = tmp_path / "qwen"  # a QwenImagePipeline folder: text_encoder/ and tokenizer/
    encoder_folder(pipe / "text_encoder", tokenizer=False, weights=None)
    encoder_folder(pipe / "tokenizer", weights=None).joinpath("config.json").unlink()
    assert missing_paths(cfg) == [
        f"qwen_encoder.path: {pipe / 'text_encoder'} holds no model weights; copy the weights (model.safetensors, or "
        "its shards and their .index.json) beside config.json"
    ]
    shard_index(
        pipe / "text_encoder",
        "model.safetensors.index.json",
        [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)],
    )
    assert missing_paths(cfg) == []


def test_sd3s_clip_towers_are_read_from_their_numbered_pipeline_subfolders(tmp_path):
    pipe = tmp_path / "sd3"
    encoder_folder(pipe / "text_encoder")
    encoder_folder(pipe / "text_encoder_2", tokenizer=False)
    (pipe / "tokenizer_2").mkdir()  # the CLIP-G tokenizer folder, left empty
    overrides = [
        f"{s}.{k}={v}" for s in ("pooled_encoder", "pooled_encoder_2") for k, v in (("path", pipe), ("size", "null"))
    ]
    assert missing_paths(load_config("recipes/tiny_sd3_cpu.yaml", overrides)) == [
        f"pooled_encoder_2.path: {str(pipe)!r}: {pipe / 'tokenizer_2'} has no tokenizer_config.json; save the "
        "tokenizer there with save_pretrained"
    ]
    (pipe / "tokenizer_2" / "tokenizer_config.json").write_text("{}")
    assert missing_paths(load_config("recipes/tiny_sd3_cpu.yaml", overrides)) == []


def test_an_encoder_the_family_does_not_read_is_not_a_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.warns(UserWarning, match="qwen_encoder is ignored.*pooled_encoder_2 is ignored"):
        cfg = load_config(
            "recipes/tiny_flux_cpu.yaml", [f"qwen_encoder.path={missing}", f"pooled_encoder_2.path={missing}"]
        )
    assert missing_paths(cfg) == []  # ConfigError's warnings name them as ignored


def data_problems(path, format="webdataset"):
    return missing_paths(load_config("recipes/tiny_cpu.yaml", [f"data.path={path}", f"data.format={format}"]))


def test_every_data_path_form_the_webdataset_reader_opens_passes():
    """A shard index and a brace pattern were refused as 'not an existing folder', though the reader opens them."""
    wds = resolve_data_path("bundled:digits/webdataset")
    for path in (wds, f"{wds}/shards.json", f"{wds}/shard-{{000000..000006}}.tar.gz", "bundled:digits/webdataset"):
        assert data_problems(path) == [], path
    assert data_problems(resolve_data_path("bundled:digits/mds"), "mds") == []


def test_shards_of_the_other_format_or_build_shards_output_folder_are_named_with_the_setting_to_change():
    """build_shards' output folder (webdataset/ and mds/ inside) was said to hold no .tar shards, and webdataset
    shards read as MDS to have no index.json: each now names what the folder holds and which setting fixes it."""
    built, wds, mds = (resolve_data_path(f"bundled:digits{sub}") for sub in ("", "/webdataset", "/mds"))
    assert data_problems("bundled:digits") == [
        f"data.path: webdataset path {built!r} holds no shards itself: it is launchers/build_shards.py's output "
        f"folder; point data.path at its webdataset/ subfolder, {wds}"
    ]
    assert data_problems(built, "mds") == [
        f"data.path: MDS path {built!r} holds no shards itself: it is launchers/build_shards.py's output folder; "
        f"point data.path at its mds/ subfolder, {mds}"
    ]
    assert data_problems(wds, "mds") == [
        f"data.path: MDS path {wds!r} has no index.json: it holds webdataset shards (.tar); read them with "
        "data.format=webdataset"
    ]
    assert data_problems(mds) == [
        f"data.path: webdataset path {mds!r} holds no .tar shards: it holds MDS shards (index.json); read them with "
        "data.format=mds"
    ]


def test_shards_the_readers_would_refuse_are_named_before_launch(tmp_path):
    wds = resolve_data_path("bundled:digits/webdataset")
    (tmp_path / "empty").mkdir()
    assert data_problems(tmp_path / "empty") == [
        f"data.path: webdataset path '{tmp_path / 'empty'}' holds no .tar shards; point data.path at built shards"
    ]
    pattern = f"{wds}/shard-{{000005..000007}}.tar.gz"
    assert data_problems(pattern) == [
        f"data.path: webdataset shard '{wds}/shard-000007.tar.gz' (from data.path='{pattern}') does not exist"
    ]
    (tmp_path / "shards.json").write_text('{"shardlist": [{"url": "a.tar"}]}')
    [problem] = data_problems(tmp_path / "shards.json")
    assert problem.startswith(
        f"data.path: webdataset index '{tmp_path / 'shards.json'}' is not a shard index (KeyError"
    )
    assert data_problems(tmp_path / "nowhere") == [
        f"data.path: webdataset path '{tmp_path / 'nowhere'}' does not exist: give a folder of .tar shards, a "
        "shards.json index or a brace pattern (launchers/build_shards.py writes the first two)"
    ]
    [problem] = data_problems("pipe:cat /nowhere/shard-000000.tar")  # the reader's own reason, not "does not exist"
    assert problem.startswith("data.path: webdataset path 'pipe:cat /nowhere/shard-000000.tar' is remote: sample")
    assert data_problems(tmp_path / "empty", "mds") == [
        f"data.path: MDS path '{tmp_path / 'empty'}' has no index.json: not an MDS dataset (build it with build_shards)"
    ]
    mds = tmp_path / "mds"
    shutil.copytree(resolve_data_path("bundled:digits/mds"), mds)
    (mds / "shard.00001.mds").unlink()
    assert data_problems(mds, "mds") == [
        f"data.path: MDS shard '{mds / 'shard.00001.mds'}' listed in {mds / 'index.json'} is missing; rebuild"
    ]


def test_a_gan_stage_started_from_its_own_run_dir_is_refused(tmp_path):
    """A GAN stage whose gan.init_from is its own checkpoint.run_dir would resume the regression run's checkpoints
    and let retention delete them; the recipe check names it with the fix."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    gan = ["gan.enabled=true", "gan.warmup_steps=1", "train.max_steps=3", f"gan.init_from={run}"]
    same = missing_paths(load_config("recipes/tiny_cpu.yaml", [*gan, f"checkpoint.run_dir={run}/"]))
    assert any(p.startswith("gan.init_from:") and "checkpoint.run_dir" in p for p in same), same
    assert missing_paths(load_config("recipes/tiny_cpu.yaml", [*gan, f"checkpoint.run_dir={tmp_path / 'gan'}"])) == []


def test_a_gan_stage_resumes_after_its_init_from_run_was_removed(tmp_path):
    """gan.init_from is read by a fresh run only; a GAN stage's requeued job was refused for ever once the regression
    run it started from had been moved or deleted (and changing the key is a recipe change)."""
    gone, run = tmp_path / "regression", tmp_path / "gan"
    gan = ["gan.enabled=true", "gan.warmup_steps=1", "train.max_steps=3", f"gan.init_from={gone}"]
    cfg = load_config("recipes/tiny_cpu.yaml", [*gan, f"checkpoint.run_dir={run}"])
    assert any(p.startswith("gan.init_from:") for p in missing_paths(cfg))  # a fresh run needs it
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step_00000002")
    assert missing_paths(cfg) == []


def test_home_and_environment_variables_in_recipe_paths_are_expanded_as_the_recipe_is_read(tmp_path, monkeypatch):
    """`data.path: ~/data/shards` (or `$SCRATCH/...`, or the same override on the command line, which no shell
    expands after `data.path=`) was read literally: refused as a path that does not exist, and a `~/runs` run_dir made a
    folder named '~' in the working folder. Every recipe path is expanded as it is read, so the path check, the loaders
    and the run's saved config.yaml see one path, and resuming under the same recipe is no recipe change."""
    from ard_scale.config import recipe_changes
    from ard_scale.config.loader import to_dict
    from ard_scale.data import build_loader

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARD_TEST_SCRATCH", str(tmp_path / "scratch"))
    shutil.copytree(resolve_data_path("bundled:digits/webdataset"), tmp_path / "home" / "data" / "wds")
    overrides = ["data.path=~/data/wds", "checkpoint.run_dir=${ARD_TEST_SCRATCH}/runs/r1", "data.num_workers=0"]
    cfg = load_config("recipes/tiny_cpu.yaml", overrides)
    assert cfg.data.path == str(tmp_path / "home" / "data" / "wds")
    assert cfg.checkpoint.run_dir == str(tmp_path / "scratch" / "runs" / "r1")
    assert missing_paths(cfg) == []
    assert len(next(iter(build_loader(cfg.data, rank=0, world_size=1)))["keys"]) == cfg.data.batch_size
    # resuming: the saved config.yaml holds the expanded paths; the same recipe, or its paths written out, matches it
    written_out = load_config("recipes/tiny_cpu.yaml", [f"data.path={cfg.data.path}", *overrides[1:]])
    assert recipe_changes(to_dict(cfg), cfg) == recipe_changes(to_dict(cfg), written_out) == []
    # a data section built in code reads `~` as the recipe does
    code_built = build_loader(DataConfig(**{**vars(cfg.data), "path": "~/data/wds"}), rank=0, world_size=1)
    assert code_built.shards[0].url.startswith(str(tmp_path / "home" / "data" / "wds"))


def test_an_unset_variable_in_a_recipe_path_is_named_and_urls_are_left_as_written(monkeypatch):
    monkeypatch.delenv("ARD_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError) as e:
        load_config("recipes/tiny_cpu.yaml", ["data.path=$ARD_TEST_UNSET/shards"])
    assert e.value.problems == [
        "data.path: environment variable $ARD_TEST_UNSET (in '$ARD_TEST_UNSET/shards') is not set; set it, or write "
        "the path out"
    ]
    command = "pipe:curl -s https://host/shard-{0..3}.tar?token=$ARD_TEST_UNSET"  # the shell running it expands it
    assert load_config("recipes/tiny_cpu.yaml", [f"data.path={command}"]).data.path == command


def test_wildcards_in_a_path_are_named_with_what_to_give_instead(tmp_path):
    """A glob (`shards/*.tar`) is not expanded by any reader: the error said only that the path does not exist."""
    assert data_problems(tmp_path / "*.tar") == [
        f"data.path: webdataset path '{tmp_path / '*.tar'}' does not exist: give a folder of .tar shards, a "
        "shards.json index or a brace pattern (launchers/build_shards.py writes the first two); wildcards (* ? [ ]) "
        "are not expanded: give the folder of the shards, its shards.json or a brace pattern such as "
        "shard-{000000..000099}.tar"
    ]
    assert data_problems(tmp_path / "mds-*", "mds") == [
        f"data.path: MDS path '{tmp_path / 'mds-*'}' is not an existing folder (built shards: "
        "launchers/build_shards.py); wildcards (* ? [ ]) are not expanded: give the dataset's folder, which holds its "
        "index.json"
    ]
    cfg = load_config(RECIPE, [f"teacher.path={tmp_path / 'pixart-*'}", "teacher.size=null"])
    assert [p for p in missing_paths(cfg) if p.startswith("teacher.path")] == [
        f"teacher.path: '{tmp_path / 'pixart-*'}' is not an existing folder (a local diffusers model or pipeline "
        "folder); wildcards (* ? [ ]) are not expanded: give the folder itself"
    ]


def test_missing_precomputed_text_names_the_tool_that_writes_it(tmp_path):
    """The walkthrough's recipe checked before its step 3 (`python -m ard_scale.config`) named the missing folder of
    precomputed text with "(built shards: launchers/build_shards.py)", a step the user had taken: that folder is
    launchers/precompute_text.py's output."""
    text = tmp_path / "text"
    cfg = load_config(RECIPE, ["data.format=mds", f"data.path={text}", "text_encoder.use_precomputed=true"])
    assert missing_paths(cfg) == [
        f"data.path: MDS path '{text}' is not an existing folder (built shards: launchers/build_shards.py); with "
        "text_encoder.use_precomputed=true it is the folder launchers/precompute_text.py writes: python "
        f"launchers/precompute_text.py SHARDS {text} --recipe RECIPE"
    ]
    cfg = load_config(RECIPE, ["data.format=mds", f"data.path={text}"])  # shards of images and captions: as it was
    assert missing_paths(cfg) == [
        f"data.path: MDS path '{text}' is not an existing folder (built shards: launchers/build_shards.py)"
    ]
