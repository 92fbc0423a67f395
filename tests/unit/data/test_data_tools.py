"""build_shards from tables, precompute_text with a tiny local T5, and the bundled digits."""

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from data_helpers import make_image_folder
from test_data_roundtrip import load_launcher

from ard_scale.config.data import DataConfig
from ard_scale.data.bundled import NUM_SAMPLES, bundled_digits_path, caption_for
from ard_scale.data.loader import build_loader


def read(fmt, path, **kwargs):
    config = DataConfig(**{**dict(format=fmt, path=str(path), batch_size=8, resolution=16, num_workers=0,
                                  num_epochs=1, shuffle=False), **kwargs})  # fmt: skip
    return list(build_loader(config, rank=0, world_size=1))


def test_build_shards_from_jsonl_reports_skips(tmp_path, capsys, mds_env):
    expected = make_image_folder(str(tmp_path / "img"), 4)
    rows = [{"path": f"img/{k}.{'png' if i % 2 == 0 else 'jpg'}", "caption": c, "label": label}
            for i, (k, c, label) in enumerate(expected)]  # fmt: skip
    rows += [{"path": "img/missing.png", "caption": "gone"}, {"path": rows[0]["path"], "caption": " "}]
    (tmp_path / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = load_launcher("build_shards").main(
        [str(tmp_path / "list.jsonl"), str(tmp_path / "out"), "--formats", "mds"]
    )
    assert counts == {"mds": 4}
    out = capsys.readouterr().out
    assert "skipped 2" in out and "missing image file" in out and "missing caption" in out
    batches = read("mds", tmp_path / "out" / "mds")
    assert [c for b in batches for c in b["captions"]] == [c for _, c, _ in expected]
    assert [int(x) for b in batches for x in b["labels"]] == [label for _, _, label in expected]


def test_build_shards_skips_and_counts_a_bad_caption_json_or_label(tmp_path, capsys):
    make_image_folder(str(tmp_path / "img"), 5)
    (tmp_path / "img" / "img-0001.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "img" / "img-0002.json").write_text("{not json")
    (tmp_path / "img" / "img-0003.json").write_text('{"label": "cat"}')
    counts = load_launcher("build_shards").main(
        [str(tmp_path / "img"), str(tmp_path / "out"), "--formats", "webdataset"]
    )
    assert counts == {"webdataset": 2}
    out = capsys.readouterr().out
    assert "skipped 3" in out and "caption is not UTF-8" in out and "undecodable .json" in out
    assert "label is not an integer" in out
    keys = [k for b in read("webdataset", tmp_path / "out" / "webdataset") for k in b["keys"]]
    assert keys == ["img-0000", "img-0004"]


def test_both_formats_keep_each_samples_label_when_the_first_sample_has_none(tmp_path, mds_env, tiny_t5):
    """MDS took its label column from the first sample: without a label there, every label was dropped from the MDS
    shards (and from precompute_text's) while the webdataset shards kept them."""
    expected = make_image_folder(str(tmp_path / "img"), 4)
    os.remove(tmp_path / "img" / "img-0000.json")
    load_launcher("build_shards").main([str(tmp_path / "img"), str(tmp_path / "out")])
    load_launcher("precompute_text").main([str(tmp_path / "out" / "mds"), str(tmp_path / "t5mds"), "--t5", tiny_t5,
                                           "--max-length", "8"])  # fmt: skip
    want = [None] + [label for _, _, label in expected[1:]]
    for fmt, path in (("webdataset", "out/webdataset"), ("mds", "out/mds"), ("mds", "t5mds")):
        batches = read(fmt, tmp_path / path, batch_size=1)
        assert [int(b["labels"][0]) if "labels" in b else None for b in batches] == want, path


def test_a_source_folders_subfolders_are_read_in_name_order(tmp_path):
    """os.walk lists subfolders in the file system's order (hash order on ext4, creation order elsewhere), so two
    copies of one image folder were built into shards of different sample order: the subfolders are read by name."""
    from ard_scale.data.sources import iter_source

    names = [f"part{i:02d}" for i in (7, 2, 11, 0, 9, 4, 1, 10, 5, 3, 8, 6)]  # created out of order
    for i, name in enumerate(names):
        make_image_folder(str(tmp_path / "img" / name), 1, start=i)
    make_image_folder(str(tmp_path / "img"), 1, start=99)  # the folder's own files come first
    keys = [s["key"] for s in iter_source(str(tmp_path / "img"), {})]
    assert keys == ["img-0099"] + [f"{name}__img-{names.index(name):04d}" for name in sorted(names)]


def test_a_utf8_byte_order_mark_is_not_read_as_text(tmp_path, capsys):
    """Excel's "CSV UTF-8" and Notepad start a file with a byte-order mark: the CSV's first column is still `path`
    (it was refused as having none), a .txt caption has no U+FEFF in front and a .json label is read (it was skipped
    as undecodable), in the shard builder and in the training reader of a tar built elsewhere."""
    from data_helpers import good_members, write_tar

    expected = make_image_folder(str(tmp_path / "img"), 2)
    bom = "\ufeff"
    table = "path,caption,label\n" + "".join(
        f"img/{k}.{'png' if i % 2 == 0 else 'jpg'},{c},{label}\n" for i, (k, c, label) in enumerate(expected)
    )
    (tmp_path / "list.csv").write_text(bom + table, encoding="utf-8")
    (tmp_path / "img" / "img-0000.txt").write_text(bom + "a cat", encoding="utf-8")
    (tmp_path / "img" / "img-0001.json").write_text(bom + '{"label": 7}', encoding="utf-8")
    for source, captions, labels in (
        ("list.csv", [c for _, c, _ in expected], [0, 1]),
        ("img", ["a cat", expected[1][1]], [0, 7]),
    ):
        out = tmp_path / f"out-{source}"
        assert load_launcher("build_shards").main([str(tmp_path / source), str(out), "--formats", "webdataset"])
        assert "skipped 0" in capsys.readouterr().out
        (batch,) = read("webdataset", out / "webdataset")
        assert batch["captions"] == captions and batch["labels"].tolist() == labels, source
    write_tar(tmp_path / "bom.tar", good_members("b0", 0)[:1] + [("b0.txt", (bom + "a dog").encode())])
    (batch,) = read("webdataset", tmp_path / "bom.tar")
    assert batch["captions"] == ["a dog"]


def test_a_shard_set_is_written_whole_or_not_at_all(tmp_path, mds_env):
    from ard_scale.data.sources import iter_source
    from ard_scale.data.writers import write_shards

    make_image_folder(str(tmp_path / "img"), 6)

    def dies_after(n):  # a source that fails midway (a disk, a network mount, a kill)
        for i, sample in enumerate(iter_source(str(tmp_path / "img"), {})):
            if i == n:
                raise OSError(5, "Input/output error")
            yield sample

    with pytest.raises(OSError, match="Input/output error"):
        write_shards(dies_after(4), str(tmp_path / "out"), formats=("webdataset", "mds"), shard_bytes=1 << 10)
    assert sorted(os.listdir(tmp_path / "out")) == []  # no half shard set, for a reader or a rerun to meet

    build = load_launcher("build_shards").main
    assert build([str(tmp_path / "img"), str(tmp_path / "out")]) == {"webdataset": 6, "mds": 6}
    assert sorted(os.listdir(tmp_path / "out")) == ["mds", "webdataset"]
    before = sorted(os.listdir(tmp_path / "out" / "mds"))
    with pytest.raises(ValueError, match=f"{tmp_path / 'out' / 'webdataset'} exists and is not empty; choose a new"):
        build([str(tmp_path / "img"), str(tmp_path / "out")])  # refused before a sample is read: nothing changes
    assert sorted(os.listdir(tmp_path / "out" / "mds")) == before and len(read("mds", tmp_path / "out" / "mds")) > 0


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("t5") / "t5")
    config = T5Config(vocab_size=384, d_model=16, d_kv=8, num_heads=2, d_ff=32, num_layers=1)
    T5EncoderModel(config).save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    return path


def test_precompute_text_carries_t5_embeddings(tmp_path, tiny_t5, mds_env):
    from ard_scale.models.text_encoder import encode_captions, load_t5

    expected = make_image_folder(str(tmp_path / "img"), 5)
    load_launcher("build_shards").main([str(tmp_path / "img"), str(tmp_path / "built"), "--formats", "webdataset"])
    written = load_launcher("precompute_text").main([str(tmp_path / "built" / "webdataset"), str(tmp_path / "t5mds"),
                                                     "--t5", tiny_t5, "--format", "webdataset", "--max-length", "24",
                                                     "--batch-size", "2"])  # fmt: skip
    assert written == 5
    (batch,) = read("mds", tmp_path / "t5mds")
    assert batch["keys"] == [k for k, _, _ in expected]
    assert batch["t5_emb"].shape == (5, 24, 16) and batch["t5_mask"].shape == (5, 24)
    encoder, tokenizer = load_t5(tiny_t5)
    emb, mask = encode_captions(encoder, tokenizer, batch["captions"], max_length=24)
    assert torch.equal(batch["t5_mask"], mask.long())
    assert batch["t5_mask"][0].sum() == len(expected[0][1]) + 1  # ByT5: one token per byte + </s>
    assert torch.allclose(batch["t5_emb"], emb, atol=2e-3)  # stored as float16


def test_precompute_text_skips_and_counts_what_training_would_skip(tmp_path, tiny_t5, mds_env, capsys):
    """A caption that is not UTF-8, an undecodable .json, a label that is not an integer, a sample without caption
    and a tar that breaks off: the good samples are encoded, the rest counted by reason (before: a
    UnicodeDecodeError stopped the tool, and a broken tar's remaining samples went uncounted)."""
    from collections import Counter

    from data_helpers import good_members, image_bytes, write_index, write_tar

    from ard_scale.data.sources import iter_shard_set

    shards = tmp_path / "wds"
    shards.mkdir()
    png = image_bytes(24, 24, seed=9)
    write_tar(str(shards / "a.tar"), [
        *good_members("a0", 0),
        ("a1.png", png), ("a1.txt", b"caf\xe9"),  # latin-1
        ("a2.png", png), ("a2.txt", b"ok"), ("a2.json", b"{not json"),
        ("a3.png", png), ("a3.txt", b"ok"), ("a3.json", b'{"label": "cat"}'),
        ("a4.png", png),  # no caption
        *good_members("a5", 5),
    ])  # fmt: skip
    write_tar(str(shards / "b.tar"), [*good_members("b0", 6), *good_members("b1", 7)])
    data = (shards / "b.tar").read_bytes()
    (shards / "b.tar").write_bytes(data[: data.index(b"b1.png") + 700])  # b1 cut off inside its image
    write_index(str(shards), {"a.tar": 6, "b.tar": 2})
    skipped = Counter()
    assert [s["key"] for s in iter_shard_set(str(shards), "webdataset", skipped)] == ["a0", "a5", "b0"]
    assert skipped == {
        "caption is not UTF-8": 1,
        "undecodable .json": 1,
        "label is not an integer": 1,
        "missing caption": 1,
        "truncated or corrupt shard (ReadError) (and the rest of its shard)": 1,
    }
    written = load_launcher("precompute_text").main([str(shards), str(tmp_path / "out"), "--t5", tiny_t5,
                                                     "--format", "webdataset", "--max-length", "8"])  # fmt: skip
    assert written == 3 and "skipped 5\n" in capsys.readouterr().out


def test_pixart_captions_are_precomputed_as_its_pipeline_encodes_them_and_recorded_so(tmp_path, tiny_t5, mds_env):
    """PixArtSigmaPipeline lower-cases and strips a prompt before T5: precomputed captions are encoded that way and
    text_encoding.json says so; shards recorded otherwise (or before the record said) get a warning, not a refusal:
    their embeddings are self-consistent, only a little unlike those a prompt gets."""
    import json

    from ard_scale.config import ConfigWarning, load_config
    from ard_scale.config.paths import missing_paths
    from ard_scale.models.text_encoder import encode_captions, load_t5

    captions = ["A Red Circle", "caption NUMBER one", "a seven"]
    for (key, _, _), caption in zip(make_image_folder(str(tmp_path / "img"), 3), captions, strict=True):
        (tmp_path / "img" / f"{key}.txt").write_text(caption)
    load_launcher("build_shards").main([str(tmp_path / "img"), str(tmp_path / "built"), "--formats", "mds"])
    out = tmp_path / "text"
    load_launcher("precompute_text").main([str(tmp_path / "built" / "mds"), str(out), "--t5", tiny_t5,
                                           "--max-length", "24"])  # fmt: skip
    (batch,) = read("mds", out)
    assert batch["captions"] == captions  # the shards keep the captions as written
    encoder, tokenizer = load_t5(tiny_t5)
    emb, mask = encode_captions(encoder, tokenizer, [c.lower().strip() for c in captions], max_length=24)
    assert torch.equal(batch["t5_mask"], mask.long()) and torch.allclose(batch["t5_emb"], emb, atol=2e-3)
    raw, _ = encode_captions(encoder, tokenizer, captions, max_length=24)
    assert not torch.allclose(batch["t5_emb"], raw, atol=2e-3)  # the check can fail: raw captions encode otherwise
    record = json.loads((out / "text_encoding.json").read_text())
    assert record["captions"] == "lower-cased and stripped"

    recipe = ["teacher.family=pixart", "teacher.num_classes=null", f"text_encoder.path={tiny_t5}",
              "text_encoder.max_length=24", "text_encoder.use_precomputed=true", "data.format=mds",
              f"data.path={out}"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        assert missing_paths(load_config("recipes/tiny_cpu.yaml", recipe)) == []
    del record["captions"]  # shards precomputed before the record said
    (out / "text_encoding.json").write_text(json.dumps(record))
    said = "data.path: its captions were encoded as given, and pixart's pipeline encodes a prompt lower-cased and"
    with pytest.warns(ConfigWarning, match=said):
        assert missing_paths(load_config("recipes/tiny_cpu.yaml", recipe)) == []


def test_precomputed_text_is_written_whole_or_not_at_all(tmp_path, tiny_t5, mds_env, monkeypatch):
    import ard_scale.data.text_encoding as text_encoding

    make_image_folder(str(tmp_path / "img"), 3)
    load_launcher("build_shards").main([str(tmp_path / "img"), str(tmp_path / "built"), "--formats", "mds"])
    precompute = load_launcher("precompute_text").main
    args = [str(tmp_path / "built" / "mds"), str(tmp_path / "text"), "--t5", tiny_t5, "--max-length", "8"]

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(text_encoding, "write_text_encoding", disk_full)  # the last files, after every shard
        with pytest.raises(ValueError, match=f"no room for the precomputed shards in {tmp_path}: the disk filled"):
            precompute(args)
    assert sorted(os.listdir(tmp_path)) == ["built", "img"]  # no shards without their null condition and record
    assert precompute(args) == 3
    assert {"index.json", "null_condition.safetensors", "text_encoding.json"} <= set(os.listdir(tmp_path / "text"))
    with pytest.raises(SystemExit, match=f"error: {tmp_path / 'text'} exists and is not empty; choose a new folder"):
        precompute(args)


def test_precompute_text_names_webdataset_shards_read_as_mds_and_the_build_folder(tmp_path, tiny_t5):
    """Webdataset shards given with the default --format mds were said to lack index.json ("build it with
    build_shards.py"), though they were built: the fix is --format webdataset, or the build folder's subfolder."""
    make_image_folder(str(tmp_path / "img"), 3)
    load_launcher("build_shards").main([str(tmp_path / "img"), str(tmp_path / "built"), "--formats", "webdataset"])
    precompute = load_launcher("precompute_text").main
    wds = tmp_path / "built" / "webdataset"
    with pytest.raises(SystemExit) as stopped:
        precompute([str(wds), str(tmp_path / "text"), "--t5", tiny_t5])
    assert stopped.value.code == (
        f"error: MDS path {str(wds)!r} has no index.json: it holds webdataset shards (.tar); read them with "
        "--format webdataset"
    )
    with pytest.raises(SystemExit) as stopped:
        precompute([str(tmp_path / "built"), str(tmp_path / "text"), "--t5", tiny_t5])
    assert stopped.value.code == (
        f"error: MDS path {str(tmp_path / 'built')!r} holds no shards itself: it is launchers/build_shards.py's output "
        f"folder, with webdataset shards only; give SHARDS {wds} and --format webdataset"
    )
    assert sorted(os.listdir(tmp_path)) == ["built", "img"]


def test_load_t5_needs_a_local_folder(tmp_path):
    from ard_scale.models.text_encoder import load_t5

    with pytest.raises(ValueError, match="not a local folder"):
        load_t5(str(tmp_path / "nope"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="lacks model or tokenizer"):
        load_t5(str(tmp_path / "empty"))


def test_bundled_digits_in_both_formats(mds_env):
    by_format = {}
    for fmt in ("webdataset", "mds"):
        samples = {}
        for batch in read(fmt, bundled_digits_path(fmt), batch_size=256, resolution=32):
            for key, caption, label, image in zip(
                batch["keys"], batch["captions"], batch["labels"], batch["images"], strict=True
            ):
                assert caption == caption_for(int(label))
                samples[key] = (int(label), image)
        assert len(samples) == NUM_SAMPLES and sorted(samples)[0] == "digits-0000"
        by_format[fmt] = samples
    assert {k: v[0] for k, v in by_format["webdataset"].items()} == {k: v[0] for k, v in by_format["mds"].items()}
    assert torch.equal(by_format["webdataset"]["digits-0007"][1], by_format["mds"]["digits-0007"][1])
    assert sorted({label for label, _ in by_format["mds"].values()}) == list(range(10))


def test_precompute_text_for_flux_writes_unmasked_t5_and_the_pooled_clip_embedding(tmp_path, tiny_t5, mds_env):
    from ard_scale.models.text_encoder import build_clip, encode_captions, encode_pooled, load_t5

    clip, clip_tokenizer = build_clip("debug")
    clip.save_pretrained(tmp_path / "pipe" / "text_encoder")  # a pipeline folder: text_encoder/ + tokenizer/
    clip_tokenizer.save_pretrained(tmp_path / "pipe" / "tokenizer")
    make_image_folder(str(tmp_path / "img"), 3)
    load_launcher("build_shards").main([str(tmp_path / "img"), str(tmp_path / "built"), "--formats", "webdataset"])
    written = load_launcher("precompute_text").main([str(tmp_path / "built" / "webdataset"), str(tmp_path / "out"),
                                                     "--t5", tiny_t5, "--family", "flux", "--format", "webdataset",
                                                     "--pooled-encoder", str(tmp_path / "pipe"), "--max-length", "24",
                                                     "--pooled-max-length", "16"])  # fmt: skip
    assert written == 3
    (batch,) = read("mds", tmp_path / "out")
    encoder, tokenizer = load_t5(tiny_t5)
    emb, mask = encode_captions(encoder, tokenizer, batch["captions"], max_length=24, use_mask=False)
    masked, _ = encode_captions(encoder, tokenizer, batch["captions"], max_length=24)
    assert mask is None and bool((batch["t5_mask"] == 1).all())
    assert torch.allclose(batch["t5_emb"], emb, atol=2e-3) and not torch.allclose(batch["t5_emb"], masked, atol=2e-3)
    pooled = encode_pooled(clip, clip_tokenizer, batch["captions"], max_length=16)
    assert batch["pooled_emb"].shape == (3, 16) and torch.allclose(batch["pooled_emb"], pooled, atol=2e-3)


def test_precompute_text_names_the_encoders_a_family_needs_without_a_recipe(tmp_path, tiny_t5):
    """SD3 reads two CLIP towers besides T5: without a recipe naming CLIP-G, an error, not partial shards."""
    with pytest.raises(SystemExit) as e:
        load_launcher("precompute_text").main([str(tmp_path / "shards"), str(tmp_path / "out"), "--t5", tiny_t5,
                                               "--family", "sd3", "--pooled-encoder", str(tmp_path)])  # fmt: skip
    assert str(e.value.code).startswith("error: --family sd3 reads the clip_2 encoder(s): give --recipe RECIPE")
    assert not (tmp_path / "out").exists()


def test_precomputed_text_takes_the_recipes_t5_precision(tmp_path, mds_env):
    """With --recipe, precompute_text encodes with the T5 the trainer loads: in a bf16 run with
    text_encoder.precision 'run', a bf16 T5, whose tokens float16 holds exactly (fp32 T5 tokens would differ)."""
    from ard_scale.config import load_config
    from ard_scale.trainer.build import build_conditioner, build_teacher_model

    recipe_dict = yaml.safe_load(Path("recipes/tiny_flux_cpu.yaml").read_text())
    recipe_dict["train"]["precision"] = "bf16"
    recipe_dict["text_encoder"]["precision"] = "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict))
    make_image_folder(str(tmp_path / "img"), 3)
    load_launcher("build_shards").main([str(tmp_path / "img"), str(tmp_path / "built"), "--formats", "webdataset"])
    load_launcher("precompute_text").main([str(tmp_path / "built" / "webdataset"), str(tmp_path / "out"),
                                           "--recipe", str(recipe), "--format", "webdataset"])  # fmt: skip
    (batch,) = read("mds", tmp_path / "out")
    cfg = load_config(recipe)
    online, _ = build_conditioner(cfg, build_teacher_model(cfg))({"captions": batch["captions"]})
    assert online.text.dtype == torch.bfloat16
    assert torch.equal(batch["t5_emb"].float(), online.text.half().float())


@pytest.mark.parametrize("recipe", ["tiny_sd3_cpu", "tiny_qwen_image_cpu", "tiny_flux_cpu"])
def test_precomputed_text_is_the_condition_the_trainer_encodes(tmp_path, recipe, mds_env):
    """For every joint-attention family the shards carry what the trainer's own Conditioner gives the teacher for
    the same captions (CLIP-L ‖ CLIP-G ‖ T5 tokens and pooled for SD3, Qwen2.5-VL's hidden states and mask for
    Qwen-Image), and a recipe with text_encoder.use_precomputed reads it back as that condition."""
    from ard_scale.config import load_config
    from ard_scale.trainer.build import build_conditioner, build_teacher_model

    recipe_dict = yaml.safe_load((Path("recipes") / f"{recipe}.yaml").read_text())
    if "qwen_encoder" in recipe_dict:  # room for padding after the captions, so the stored mask is checked too
        recipe_dict["qwen_encoder"]["max_length"] = 32
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict))
    make_image_folder(str(tmp_path / "img"), 5)
    load_launcher("build_shards").main([str(tmp_path / "img"), str(tmp_path / "built"), "--formats", "webdataset"])
    written = load_launcher("precompute_text").main([str(tmp_path / "built" / "webdataset"), str(tmp_path / "out"),
                                                     "--recipe", str(recipe), "--format", "webdataset",
                                                     "--batch-size", "2"])  # fmt: skip
    assert written == 5
    (batch,) = read("mds", tmp_path / "out")
    cfg = load_config(recipe, ["text_encoder.use_precomputed=true"])
    conditioner = build_conditioner(cfg, build_teacher_model(cfg), for_eval=True)  # keeps its encoders
    online = conditioner.encode(batch["captions"])
    stored, stored_null = conditioner(batch)  # the shards' columns, not the encoders
    assert stored.text.shape == online.text.shape
    torch.testing.assert_close(stored.text, online.text, rtol=1e-3, atol=2e-3)  # stored as float16
    if online.text_mask is None:
        assert stored.text_mask is None and bool((batch["t5_mask"] == 1).all())
    else:
        assert torch.equal(stored.text_mask.long(), online.text_mask.long())
        assert not bool(online.text_mask.bool().all())  # the captions are shorter than max_length: padding masked
    if online.pooled is None:
        assert "pooled_emb" not in batch
    else:
        torch.testing.assert_close(stored.pooled, online.pooled, rtol=1e-3, atol=2e-3)
    assert (stored_null is None) == (conditioner.cfg_scale == 1)  # FLUX.1 embeds its guidance: no null condition

    # Training from the shards: the null condition comes from them too, so no encoder is loaded (their folders here
    # do not exist), and it is the one the encoders give; a recipe that encodes otherwise is refused before launch.
    from ard_scale.config.models import SLOT_SECTIONS
    from ard_scale.config.paths import missing_paths

    sections = [SLOT_SECTIONS[slot] for slot in conditioner.spec.text_encoders]
    nowhere = [f"{name}.{k}={v}" for name in sections for k, v in (("path", tmp_path / "nowhere"), ("size", "null"))]
    from_shards = ["text_encoder.use_precomputed=true", "data.format=mds", f"data.path={tmp_path / 'out'}"]
    cfg = load_config(recipe, from_shards + nowhere)
    trainer_side = build_conditioner(cfg, build_teacher_model(cfg))
    assert not trainer_side.encoders
    if conditioner.null is None:
        assert trainer_side.null is None
    else:
        torch.testing.assert_close(trainer_side.null.text, conditioner.null.text, rtol=0, atol=0)
        assert (trainer_side.null.text_mask is None) == (conditioner.null.text_mask is None)
        if conditioner.null.pooled is not None:
            torch.testing.assert_close(trainer_side.null.pooled, conditioner.null.pooled, rtol=0, atol=0)
    assert missing_paths(load_config(recipe, from_shards)) == []
    stored = getattr(load_config(recipe), sections[0]).max_length
    [problem] = missing_paths(load_config(recipe, [*from_shards, f"{sections[0]}.max_length=99"]))
    assert f"{sections[0]}.max_length: 99 here, {stored} in the shards" in problem


def test_precompute_text_takes_family_encoders_and_lengths_from_a_recipe(tmp_path, tiny_t5, mds_env):
    from ard_scale.models.text_encoder import build_clip

    clip, clip_tokenizer = build_clip("debug")
    clip.save_pretrained(tmp_path / "clip")
    clip_tokenizer.save_pretrained(tmp_path / "clip")
    recipe = tmp_path / "recipe.yaml"
    text = (Path("recipes/tiny_flux_cpu.yaml")).read_text()
    text = text.replace(
        "text_encoder:\n  size: debug\n  max_length: 8", f"text_encoder:\n  path: {tiny_t5}\n  max_length: 12"
    )
    text = text.replace("pooled_encoder:\n  size: debug", f"pooled_encoder:\n  path: {tmp_path / 'clip'}")
    recipe.write_text(text)
    make_image_folder(str(tmp_path / "img"), 2)
    load_launcher("build_shards").main([str(tmp_path / "img"), str(tmp_path / "built"), "--formats", "webdataset"])
    load_launcher("precompute_text").main([str(tmp_path / "built" / "webdataset"), str(tmp_path / "out"),
                                           "--recipe", str(recipe), "--format", "webdataset"])  # fmt: skip
    (batch,) = read("mds", tmp_path / "out")
    assert batch["t5_emb"].shape == (2, 12, 16)  # the recipe's max_length, its T5 folder
    assert batch["pooled_emb"].shape == (2, 16) and bool((batch["t5_mask"] == 1).all())  # flux: pooled, no mask

    # Training from these shards: the recipe's T5 may sit at another path, but not hold other weights of the same
    # architecture (its evaluation and its exported pipeline would encode prompts otherwise than it was trained).
    from transformers import T5EncoderModel

    from ard_scale.config import load_config
    from ard_scale.config.paths import missing_paths

    shutil.copytree(tiny_t5, tmp_path / "t5_moved")
    other = T5EncoderModel.from_pretrained(tiny_t5)
    torch.nn.init.normal_(other.shared.weight, generator=torch.Generator().manual_seed(1))
    shutil.copytree(tiny_t5, tmp_path / "t5_other")
    other.save_pretrained(tmp_path / "t5_other")  # same config, same file sizes
    from_shards = ["text_encoder.use_precomputed=true", "data.format=mds", f"data.path={tmp_path / 'out'}"]
    assert missing_paths(load_config(recipe, [*from_shards, f"text_encoder.path={tmp_path / 't5_moved'}"])) == []
    [problem] = missing_paths(load_config(recipe, [*from_shards, f"text_encoder.path={tmp_path / 't5_other'}"]))
    assert f"text_encoder.path: '{tmp_path / 't5_other'}' holds other weights than the shards were encoded with " in (
        problem
    )
    assert f"({tiny_t5!r} there; fingerprint " in problem


def test_precompute_text_refuses_an_embedding_float16_cannot_hold():
    half = load_launcher("precompute_text")._half
    assert half(torch.tensor([1.0, -65504.0]), "t5_emb").tolist() == [1.0, -65504.0]
    with pytest.raises(ValueError, match="t5_emb: the encoders gave values up to 1e\\+06, beyond float16"):
        half(torch.tensor([1.0, 1e6]), "t5_emb")
    with pytest.raises(ValueError, match="pooled_emb: .* non-finite"):
        half(torch.tensor([float("nan")]), "pooled_emb")


def test_build_shards_on_a_full_disk_is_an_error_saying_so(tmp_path, small_disk, mds_env):
    make_image_folder(str(tmp_path / "img"), 6)
    disk = small_disk(8)
    with pytest.raises(ValueError, match=rf"no room for the (webdataset|mds) shards in {disk / 'out'}: the disk fill"):
        load_launcher("build_shards").main([str(tmp_path / "img"), str(disk / "out")])
    assert os.listdir(disk / "out") == []  # neither shard set, not even the one that fitted
