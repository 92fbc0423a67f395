"""CheckpointManager's own logic (publishing, retention, refusals, EMA reassembly) with a stand-in engine, one process.

The real DeepSpeed ZeRO-3 behaviour on 2 ranks is tested in tests/distributed/test_checkpoint.py."""

import json
import os
import random
import re
import shutil
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ard_scale.checkpoint.export import full_ema_state_dict
from ard_scale.checkpoint.layout import atomic_write_text, rank_file
from ard_scale.checkpoint.manager import META, CheckpointManager, CheckpointSaveError
from ard_scale.checkpoint.safe_load import safe_load
from ard_scale.config import load_config, to_dict
from ard_scale.trainer.loop import ProcessRNG

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "tiny_cpu.yaml"


class FakeEngine:
    """What the manager uses of a DeepSpeed engine: save_checkpoint / load_checkpoint / optimizer / module."""

    def __init__(self, optimizer=True):
        self.optimizer = object() if optimizer else None
        self.module = torch.nn.Linear(2, 2)

    def zero_optimization_stage(self):
        return 3

    def load_universal_checkpoint(self):
        return False

    def save_checkpoint(self, save_dir, tag, client_state, save_latest, exclude_frozen_parameters=False):
        assert save_latest is False
        assert exclude_frozen_parameters  # a LoRA student's frozen base is never written
        d = f"{save_dir}/{tag}"
        os.makedirs(d, exist_ok=True)
        torch.save(dict(client_state), f"{d}/zero_pp_rank_0_mp_rank_00_model_states.pt")

    def load_checkpoint(self, load_dir, tag):
        path = f"{load_dir}/{tag}"
        return path, torch.load(f"{path}/zero_pp_rank_0_mp_rank_00_model_states.pt")


@pytest.fixture
def cfg():
    return to_dict(load_config(RECIPE))


def test_save_publishes_latest_and_keeps_last_k(tmp_path, cfg):
    mgr, engine = CheckpointManager(tmp_path, keep_last=2, config_dict=cfg), FakeEngine()
    assert mgr.load_latest(engine) is None  # fresh run
    for step in (10, 20, 30):
        mgr.save(engine, step, {"step": step}, {"cursor": step * 3})
    assert mgr.latest_tag() == "step_00000030"
    assert mgr.complete_tags() == ["step_00000020", "step_00000030"]
    client, rank_state = mgr.load_latest(engine)
    assert client == {"step": 30} and rank_state == {"cursor": 90}
    meta = json.loads((tmp_path / "checkpoints" / "step_00000030" / META).read_text())
    assert meta["step"] == 30 and meta["world_size"] == 1 and meta["config_hash"] == mgr.config_hash
    assert meta["student"] is None  # not an ARD student: export would refuse it


def test_crash_before_publish_keeps_previous_latest_and_the_next_save_replaces_the_leftover(tmp_path, cfg):
    mgr, engine = CheckpointManager(tmp_path, keep_last=3, config_dict=cfg), FakeEngine()
    mgr.save(engine, 1, {"step": 1}, {})

    def die(*args):
        raise KeyboardInterrupt  # stands in for the process dying between DeepSpeed's files and the barrier

    mgr._write_rank_state, real = die, mgr._write_rank_state
    with pytest.raises(KeyboardInterrupt):
        mgr.save(engine, 2, {"step": 2}, {})
    assert mgr.latest_tag() == "step_00000001" and mgr.complete_tags() == ["step_00000001"]
    stale = tmp_path / "checkpoints" / "step_00000002" / "stale_file_from_the_crash"
    stale.write_text("x")
    mgr._write_rank_state = real
    mgr.save(engine, 2, {"step": 2}, {})
    assert mgr.latest_tag() == "step_00000002" and not stale.exists()
    mgr.save(engine, 2, {"step": 2}, {})  # saving the same step again (e.g. stop signal after a periodic save): no-op


def test_refuses_frozen_engines_and_reserved_keys(tmp_path, cfg):
    mgr = CheckpointManager(tmp_path, keep_last=1, config_dict=cfg)
    with pytest.raises(ValueError, match="without an optimizer"):
        mgr.save(FakeEngine(optimizer=False), 1, {}, {})
    with pytest.raises(ValueError, match="reserved"):
        mgr.save(FakeEngine(), 1, {"ard_step": 3}, {})


def test_recipe_change_refused_unless_allowed(tmp_path, cfg):
    CheckpointManager(tmp_path, keep_last=1, config_dict=cfg).save(FakeEngine(), 5, {"step": 5}, {"r": 0})
    changed = to_dict(load_config(RECIPE, ["diffusion.guidance_scale=3.0", "log.every=7"]))
    with pytest.raises(ValueError, match=r"diffusion\.guidance_scale: 1\.5 -> 3\.0.*allow_recipe_change=true"):
        CheckpointManager(tmp_path, keep_last=1, config_dict=changed).load_latest(FakeEngine())
    allowed = CheckpointManager(tmp_path, keep_last=1, config_dict=changed, allow_recipe_change=True)
    with pytest.warns(UserWarning, match="guidance_scale"):
        assert allowed.load_latest(FakeEngine()) == ({"step": 5}, {"r": 0})
    only_logging = to_dict(load_config(RECIPE, ["log.every=7", "train.max_steps=1000"]))
    assert CheckpointManager(tmp_path, keep_last=1, config_dict=only_logging).load_latest(FakeEngine()) is not None


def test_a_checkpoint_from_before_a_setting_existed_resumes_as_its_default(tmp_path, cfg):
    """A key the checkpoint's config.yaml lacks is a setting the ard_scale that wrote it did not have: it compares as
    its default (what that version did), so an upgrade that adds a setting does not refuse every run's resume."""
    CheckpointManager(tmp_path, keep_last=1, config_dict=cfg).save(FakeEngine(), 5, {"step": 5}, {"r": 0})
    saved = tmp_path / "checkpoints" / "step_00000005" / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["student"]["window"], old["diffusion"]["record"]  # two settings this 'older version' did not have
    saved.write_text(yaml.safe_dump(old))  # (its checksum no longer matches: the recipe check is called directly)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CheckpointManager(tmp_path, keep_last=1, config_dict=cfg).check_recipe("step_00000005")
    # one that is not today's default is still a change, and one today's version no longer knows is named as written
    changed = to_dict(load_config(RECIPE, ["diffusion.guidance_scale=3.0"]))
    old["student"]["retired_setting"] = 1
    saved.write_text(yaml.safe_dump(old))
    with pytest.raises(ValueError, match=r"diffusion\.guidance_scale: 1\.5 -> 3\.0.*student\.retired_setting: 1 -> "):
        CheckpointManager(tmp_path, keep_last=1, config_dict=changed).check_recipe("step_00000005")


def test_a_new_step_budget_under_a_decaying_schedule_warns_that_the_learning_rate_moves(tmp_path):
    cosine = ["train.lr_schedule=cosine", "train.max_steps=100"]
    CheckpointManager(tmp_path, keep_last=1, config_dict=to_dict(load_config(RECIPE, cosine))).save(
        FakeEngine(), 5, {"step": 5}, {"r": 0}
    )
    longer = to_dict(load_config(RECIPE, [*cosine, "train.max_steps=400"]))
    with pytest.warns(UserWarning, match=r"from 100 to 400 .*cosine.*train\.max_steps=100 to keep it"):
        assert CheckpointManager(tmp_path, keep_last=1, config_dict=longer).load_latest(FakeEngine()) is not None
    same = to_dict(load_config(RECIPE, cosine))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same budget: no warning
        assert CheckpointManager(tmp_path, keep_last=1, config_dict=same).load_latest(FakeEngine()) is not None


def test_a_new_step_budget_under_a_constant_schedule_resumes_silently(tmp_path, cfg):
    CheckpointManager(tmp_path, keep_last=1, config_dict=cfg).save(FakeEngine(), 5, {"step": 5}, {"r": 0})
    longer = to_dict(load_config(RECIPE, ["train.max_steps=1000"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CheckpointManager(tmp_path, keep_last=1, config_dict=longer).load_latest(FakeEngine()) is not None


def test_full_ema_reassembles_zero3_shards_and_prefers_ema_full(tmp_path, cfg):
    tag_dir = tmp_path / "checkpoints" / "step_00000001"
    tag_dir.mkdir(parents=True)
    (tag_dir / META).write_text(json.dumps({"world_size": 2}))
    torch.save({"step": 1}, tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    full = torch.arange(15.0).view(3, 5)  # 15 elements over 2 ranks: shards of 8, the last one padded
    flat = torch.cat([full.flatten(), torch.zeros(1)])
    for r in range(2):
        shard = {"zero3": True, "world_size": 2, "shadow": {"w": flat[8 * r : 8 * (r + 1)]}}
        torch.save({"ema": shard}, rank_file(tag_dir, r))
    ema = full_ema_state_dict(tmp_path, "step_00000001", {"w": full.shape, "buffer": torch.Size([2])})
    assert set(ema) == {"w"} and torch.equal(ema["w"], full)

    torch.save({"step": 1, "ema_full": {"w": -full}}, tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    assert torch.equal(full_ema_state_dict(tmp_path, "step_00000001", {"w": full.shape})["w"], -full)


# -- a planted pickle in any checkpoint file is refused naming the file, and never runs --


class Payload:
    """Unpickling this creates the marker file: the code a planted checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(path: Path, marker: Path) -> None:
    torch.save({"step": 1, "evil": Payload(marker)}, path)


@pytest.mark.parametrize("victim", ["rank", "deepspeed"])
def test_planted_pickle_is_refused_naming_the_file_and_never_runs(tmp_path, cfg, victim):
    mgr, engine = CheckpointManager(tmp_path / "run", keep_last=2, config_dict=cfg), FakeEngine()
    mgr.save(engine, 1, {"step": 1}, {"data": {"cursor": 3}, "rng": ProcessRNG().state_dict()})
    tag_dir = tmp_path / "run" / "checkpoints" / "step_00000001"
    target = rank_file(tag_dir, 0) if victim == "rank" else tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    marker = tmp_path / "pwned"
    plant(target, marker)
    with pytest.raises(ValueError, match=target.name):
        mgr.load_latest(engine)
    assert not marker.exists()
    with pytest.raises(ValueError, match=target.name):
        full_ema_state_dict(tmp_path / "run", "step_00000001", {})
    assert not marker.exists()


def test_a_pickle_planted_beside_the_listed_files_is_refused_naming_it_and_never_runs(tmp_path, cfg):
    """A `.pt` added to a complete checkpoint after its save is in no marker entry, so neither the checksums nor the
    per-file safe load see it; DeepSpeed's readers glob their shard names and unpickle whatever matches."""
    mgr, engine = CheckpointManager(tmp_path / "run", keep_last=2, config_dict=cfg), FakeEngine()
    mgr.save(engine, 1, {"step": 1}, {"cursor": 3})
    tag_dir = tmp_path / "run" / "checkpoints" / "step_00000001"
    marker = tmp_path / "pwned"
    plant(tag_dir / "zero_pp_rank_1_mp_rank_00_optim_states.pt", marker)
    with pytest.raises(ValueError, match=r"zero_pp_rank_1_mp_rank_00_optim_states\.pt: not listed in"):
        mgr.load_latest(engine)
    assert not marker.exists()


def test_rank_state_with_rng_loads_weights_only_and_restores_every_generator(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn(3)  # leave a cached gaussian and a mid-stream position
    path = tmp_path / "rank_00000.pt"
    torch.save({"rng": ProcessRNG().state_dict()}, path)
    expected = (random.random(), np.random.randn(4), torch.randn(4))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ProcessRNG().load_state_dict(safe_load(path)["rng"])
    got = (random.random(), np.random.randn(4), torch.randn(4))
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])


def test_rank_state_without_a_cuda_rng_entry_loads_and_the_rng_state_round_trips(tmp_path):
    """Rank files written on CPU, or before the CUDA generator was saved, hold no "cuda" entry: they load as before.
    (The CUDA path itself: test_the_cuda_rng_of_this_rank_is_restored, on a GPU.)"""
    state = ProcessRNG().state_dict()
    assert ("cuda" in state) == (torch.cuda.is_available() and torch.cuda.is_initialized())
    path = tmp_path / "rank_00000.pt"
    torch.save({"rng": {k: v for k, v in state.items() if k != "cuda"}}, path)
    expected = (random.random(), np.random.randn(2), torch.randn(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    loaded = safe_load(path)["rng"]
    ProcessRNG().load_state_dict(loaded)
    got = (random.random(), np.random.randn(2), torch.randn(2))
    assert got[0] == expected[0] and np.array_equal(got[1], expected[1]) and torch.equal(got[2], expected[2])
    again = ProcessRNG()
    again.load_state_dict(loaded)
    assert torch.equal(again.state_dict()["torch"], loaded["torch"])


@pytest.mark.gpu
def test_the_cuda_rng_of_this_rank_is_restored(tmp_path):
    torch.cuda.manual_seed(3)
    torch.rand(1, device="cuda")  # mid-stream
    path = tmp_path / "rank_00000.pt"
    torch.save({"rng": ProcessRNG().state_dict()}, path)
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed(9)
    ProcessRNG().load_state_dict(safe_load(path)["rng"])
    assert torch.equal(torch.rand(4, device="cuda"), expected)
    before = torch.cuda.get_rng_state()
    ProcessRNG().load_state_dict({k: v for k, v in safe_load(path)["rng"].items() if k != "cuda"})
    assert torch.equal(torch.cuda.get_rng_state(), before)  # a checkpoint without the entry leaves it as it is


# -- the marker's sizes and checksums; falling back from a damaged `latest` --


def test_marker_records_size_and_checksum_of_every_file(tmp_path, cfg):
    mgr = CheckpointManager(tmp_path, keep_last=2, config_dict=cfg)
    mgr.save(FakeEngine(), 1, {"step": 1}, {"cursor": 3})
    tag_dir = tmp_path / "checkpoints" / "step_00000001"
    files = json.loads((tag_dir / META).read_text())["files"]
    assert set(files) == {p.name for p in tag_dir.iterdir()} - {META}
    assert set(files) == {"config.yaml", "rank_00000.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"}
    for name, d in files.items():
        assert d["size"] == (tag_dir / name).stat().st_size
        assert d["crc32"] == f"{zlib.crc32((tag_dir / name).read_bytes()):08x}"


def test_damaged_latest_falls_back_with_a_warning_and_the_next_save_replaces_it(tmp_path, cfg):
    mgr, engine = CheckpointManager(tmp_path, keep_last=3, config_dict=cfg), FakeEngine()
    for step in (1, 2):
        mgr.save(engine, step, {"step": step}, {"cursor": step})
    victim = rank_file(tmp_path / "checkpoints" / "step_00000002", 0)
    data = bytearray(victim.read_bytes())
    data[-30] ^= 0x01  # one bit
    victim.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"resuming from step_00000001.*step_00000002.*rank_00000\.pt: crc32"):
        assert mgr.load_latest(engine) == ({"step": 1}, {"cursor": 1})
    assert mgr.latest_tag() == "step_00000001"  # else the re-save of step 2 would be skipped as "already saved"
    mgr.save(engine, 2, {"step": 2}, {"cursor": 2})
    assert mgr.latest_tag() == "step_00000002" and mgr.load_latest(engine) == ({"step": 2}, {"cursor": 2})


def test_a_damaged_latest_falls_back_to_the_newest_intact_checkpoint_not_the_oldest(tmp_path, cfg):
    """Of several intact older checkpoints the resume takes the newest: any older one throws away the steps
    between them (with no error, only the warning naming what was skipped)."""
    mgr, engine = CheckpointManager(tmp_path, keep_last=4, config_dict=cfg), FakeEngine()
    for step in (1, 2, 3):
        mgr.save(engine, step, {"step": step}, {"cursor": step})
    victim = rank_file(tmp_path / "checkpoints" / "step_00000003", 0)
    victim.write_bytes(victim.read_bytes()[:-7])
    resumed = CheckpointManager(tmp_path, keep_last=4, config_dict=cfg)
    with pytest.warns(UserWarning, match=r"resuming from step_00000002 .*skipped .*step_00000003"):
        assert resumed.load_latest(engine) == ({"step": 2}, {"cursor": 2})
    assert resumed.latest_tag() == "step_00000002"


def test_a_save_that_replaces_a_damaged_step_removes_the_universal_conversion_of_the_old_one(tmp_path, cfg):
    """step_2_universal was converted from the step 2 that was later found damaged; once step 2 is written again it
    holds other weights, and a resume on another number of ranks (`resume_ds_config`) would load the old ones."""
    mgr, engine = CheckpointManager(tmp_path, keep_last=3, config_dict=cfg), FakeEngine()
    for step in (1, 2):
        mgr.save(engine, step, {"step": step}, {"cursor": step})
    ckpt = tmp_path / "checkpoints"
    shutil.copytree(ckpt / "step_00000002", ckpt / "step_00000002_universal")  # stands in for to_universal's output
    (ckpt / "step_00000002_universal.tmp").mkdir()  # and for a conversion that was interrupted
    victim = rank_file(ckpt / "step_00000002", 0)
    victim.write_bytes(victim.read_bytes()[:-7])  # truncated
    with pytest.warns(UserWarning, match=r"resuming from step_00000001"):
        assert mgr.load_latest(engine) == ({"step": 1}, {"cursor": 1})
    assert (ckpt / "step_00000002_universal").is_dir()  # the resume itself deletes nothing
    mgr.save(engine, 2, {"step": 2}, {"cursor": 22})
    assert mgr.latest_tag() == "step_00000002"
    assert not (ckpt / "step_00000002_universal").exists() and not (ckpt / "step_00000002_universal.tmp").exists()


class ConfiguredEngine(FakeEngine):
    """A stand-in engine built from a DeepSpeed config: it loads universal checkpoints when the config says so."""

    def __init__(self, ds_config: dict):
        super().__init__()
        self.universal = ds_config.get("checkpoint", {}).get("load_universal", False)

    def load_universal_checkpoint(self):
        return self.universal


def set_world_size(tag_dir: Path, world: int) -> None:
    """Mark a checkpoint as written by `world` ranks (the marker lists no checksum of itself)."""
    meta = json.loads((tag_dir / META).read_text())
    (tag_dir / META).write_text(json.dumps({**meta, "world_size": world}))


def test_resume_ds_config_decides_on_the_checkpoint_a_damaged_latest_falls_back_to(tmp_path, cfg):
    """The world size of the checkpoint the resume loads decides universal loading, not that of a damaged `latest`:
    a damaged 2-rank step 2 with a conversion made universal loading ask for a step_1_universal that this 1-rank
    run's own step 1 does not need; a damaged 1-rank step 2 left a converted 2-rank step 1 refused as unconverted."""
    mgr, engine = CheckpointManager(tmp_path, keep_last=3, config_dict=cfg), FakeEngine()
    for step in (1, 2):
        mgr.save(engine, step, {"step": step}, {"cursor": step})
    ckpt = tmp_path / "checkpoints"
    set_world_size(ckpt / "step_00000002", 2)
    shutil.copytree(ckpt / "step_00000002", ckpt / "step_00000002_universal")
    victim = rank_file(ckpt / "step_00000002", 0)
    victim.write_bytes(victim.read_bytes()[:-7])
    resumed = CheckpointManager(tmp_path, keep_last=3, config_dict=cfg)
    with pytest.warns(UserWarning, match=r"resuming from step_00000001.*step_00000002"):
        ds_config = resumed.resume_ds_config({"train_batch_size": 2})
        loaded = resumed.load_latest(ConfiguredEngine(ds_config))
    assert ds_config == {"train_batch_size": 2}  # step 1 was written by this run's 1 rank
    assert loaded == ({"step": 1}, {"cursor": 1})

    # the other way round: the damaged `latest` was written by this world size, the older intact one by another
    mgr.save(engine, 2, {"step": 2}, {"cursor": 2})
    set_world_size(ckpt / "step_00000001", 2)
    shutil.copytree(ckpt / "step_00000001", ckpt / "step_00000001_universal")
    victim.write_bytes(victim.read_bytes()[:-7])
    resumed = CheckpointManager(tmp_path, keep_last=3, config_dict=cfg)
    with pytest.warns(UserWarning, match=r"resuming from step_00000001"):
        ds_config = resumed.resume_ds_config({"train_batch_size": 2})
        loaded = resumed.load_latest(ConfiguredEngine(ds_config))
    assert ds_config["checkpoint"] == {"load_universal": True}
    assert loaded == ({"step": 1}, None)  # no per-rank state: the universal conversion was loaded


def test_a_resume_from_a_universal_checkpoint_says_so_and_leaves_the_per_rank_pieces_as_built(tmp_path, cfg):
    """On a new number of ranks the per-rank pieces (data position, RNG, EMA shards) are not in the conversion:
    `Resumed.same_world` is False, which is what makes the trainer rebuild them (`continue_on_new_world`)."""
    mgr, engine = CheckpointManager(tmp_path, keep_last=2, config_dict=cfg), FakeEngine()
    mgr.track("progress", Counter(5))
    mgr.track("data", Counter(50), per_rank=True)
    mgr.save_tracked(engine, 5)
    ckpt = tmp_path / "checkpoints"
    set_world_size(ckpt / "step_00000005", 2)
    shutil.copytree(ckpt / "step_00000005", ckpt / "step_00000005_universal")
    later = CheckpointManager(tmp_path, keep_last=2, config_dict=cfg)
    progress, data = Counter(), Counter(-1)
    later.track("progress", progress)
    later.track("data", data, per_rank=True)
    ds_config = later.resume_ds_config({"train_batch_size": 2})
    resumed = later.resume(ConfiguredEngine(ds_config))
    assert resumed is not None and resumed.tag == "step_00000005" and not resumed.same_world
    assert (progress.value, data.value) == (5, -1)  # the global piece loaded, the per-rank one left as built


class DiskFillingEngine(FakeEngine):
    """Writes its files, then another writer fills the disk up to `blocks_left` free blocks (of one small file each:
    the rank file takes the first, then rank 0's recipe, marker and `latest`)."""

    def __init__(self, blocks_left: int):
        super().__init__()
        self.blocks_left = blocks_left

    def save_checkpoint(self, save_dir, tag, client_state, save_latest, exclude_frozen_parameters=False):
        super().save_checkpoint(save_dir, tag, client_state, save_latest, exclude_frozen_parameters)
        room = self.blocks_left * os.statvfs(save_dir).f_bsize
        (Path(save_dir).parent / "other_job").write_bytes(bytes(shutil.disk_usage(save_dir).free - room))


@pytest.mark.parametrize("blocks_left", [1, 3], ids=["recipe", "latest"])
def test_a_disk_that_fills_up_at_the_end_of_a_save_is_a_save_error_and_keeps_the_latest(small_disk, cfg, blocks_left):
    """The end of a save (rank 0's recipe, marker and `latest`) on a real full disk: the save's own error, not a
    traceback; the earlier checkpoint stays the latest and nothing half-written is left to load (a marker written
    before `latest` failed is removed: without a `latest` it would be resumed)."""
    run_dir = small_disk(1024) / "run"
    ckpt = run_dir / "checkpoints"
    mgr = CheckpointManager(run_dir, keep_last=2, config_dict=cfg)
    mgr.save(FakeEngine(), 1, {"step": 1}, {"cursor": 1})
    with pytest.raises(CheckpointSaveError) as raised:
        mgr.save(DiskFillingEngine(blocks_left), 2, {"step": 2}, {"cursor": 2})
    message = str(raised.value)
    assert f"rank 0 could not write checkpoint step_00000002 in {ckpt} (OSError: [Errno 28] No space left" in message
    assert "step_00000002 is incomplete and is never loaded; step_00000001 stays the latest, intact" in message
    assert "Make room there" in message and message.endswith("it resumes from step_00000001"), message
    assert mgr.latest_tag() == "step_00000001" and mgr.complete_tags() == ["step_00000001"]
    (run_dir / "more").write_bytes(bytes(shutil.disk_usage(ckpt).free))  # not one block left
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(ckpt / "latest", "step_00000002")
    assert (ckpt / "latest").read_text() == "step_00000001"
    assert not [p.name for p in ckpt.rglob(".*.tmp.*")]  # no partial temporary file of an atomic write
    (run_dir / "more").unlink()
    (run_dir / "other_job").unlink()  # room again: the rerun resumes step 1 and saves step 2
    assert mgr.load_latest(FakeEngine()) == ({"step": 1}, {"cursor": 1})
    mgr.save(FakeEngine(), 2, {"step": 2}, {"cursor": 2})
    assert mgr.load_latest(FakeEngine()) == ({"step": 2}, {"cursor": 2})


def test_a_failed_saves_leftover_that_cannot_be_removed_is_a_save_error_on_every_rank(small_disk, cfg):
    """Rank 0's first part of a save (making the checkpoint folder, removing what failed saves left) ran outside the
    save's error handling: an OSError there was a raw traceback on rank 0 alone, while the other ranks waited for its
    decision. Here a killed save of step 2 left its folder, and the disk went read-only before the rerun's save of
    step 2: the save error of every rank (one decision, rank 0 says it), naming the read-only folder."""
    run_dir = small_disk(1024) / "run"
    ckpt = run_dir / "checkpoints"
    mgr = CheckpointManager(run_dir, keep_last=2, config_dict=cfg)
    mgr.save(FakeEngine(), 1, {"step": 1}, {"cursor": 1})
    FakeEngine().save_checkpoint(str(ckpt), "step_00000002", {}, save_latest=False, exclude_frozen_parameters=True)
    small_disk(1024, read_only=True)
    with pytest.raises(CheckpointSaveError) as raised:
        CheckpointManager(run_dir, keep_last=2, config_dict=cfg).save(FakeEngine(), 2, {"step": 2}, {"cursor": 2})
    message = str(raised.value)
    assert raised.value.every_rank, message
    assert message.startswith(f"rank 0 could not prepare checkpoint step_00000002 in {ckpt} (OSError: [Errno 30]")
    assert "The folder is not writable (creating a file there: Read-only file system)" in message, message
    assert "Nothing of step_00000002 was written; step_00000001 stays the latest, intact" in message, message
    assert message.endswith("then rerun the same command: it resumes from step_00000001"), message
    assert "full disk" not in message and "\n" not in message, message
    assert mgr.latest_tag() == "step_00000001" and mgr.complete_tags() == ["step_00000001"]
    with pytest.raises(CheckpointSaveError) as raised:  # a first save, whose checkpoint folder cannot be made
        CheckpointManager(run_dir.parent / "new", keep_last=2, config_dict=cfg).save(FakeEngine(), 1, {}, {})
    message = str(raised.value)
    assert f"creating a file in {run_dir.parent}: Read-only file system" in message, message
    assert message.endswith(f"Make {run_dir.parent} writable for the user this job runs as, then rerun the same "
                            "command: it starts over"), message  # fmt: skip


def test_retention_does_not_keep_a_checkpoint_the_resume_found_damaged_in_place_of_an_intact_one(tmp_path, cfg):
    """A stop signal's off-grid checkpoint (step 25) is damaged; the resume falls back to step 20 and the periodic
    saves never write step 25 again. At the save of step 30, keep_last=2 kept the damaged 25 and deleted the intact
    20, leaving one checkpoint to resume instead of two."""
    mgr, engine = CheckpointManager(tmp_path, keep_last=2, config_dict=cfg), FakeEngine()
    for step in (10, 20, 25):
        mgr.save(engine, step, {"step": step}, {"cursor": step})
    victim = rank_file(tmp_path / "checkpoints" / "step_00000025", 0)
    victim.write_bytes(victim.read_bytes()[:-7])
    resumed = CheckpointManager(tmp_path, keep_last=2, config_dict=cfg)
    with pytest.warns(UserWarning, match=r"resuming from step_00000020"):
        assert resumed.load_latest(engine) == ({"step": 20}, {"cursor": 20})
    resumed.save(engine, 30, {"step": 30}, {"cursor": 30})
    assert resumed.complete_tags() == ["step_00000020", "step_00000030"]  # the damaged 25 is gone, not 20
    resumed.save(engine, 40, {"step": 40}, {"cursor": 40})
    assert resumed.complete_tags() == ["step_00000030", "step_00000040"]


def test_a_missing_latest_beside_complete_checkpoints_resumes_the_newest_with_a_warning(tmp_path, cfg):
    """Without `latest` the run started over, and its saves replaced the old checkpoints one by one (a first save
    killed between its marker and `latest` lost that checkpoint the same way)."""
    mgr, engine = CheckpointManager(tmp_path, keep_last=3, config_dict=cfg), FakeEngine()
    for step in (1, 2):
        mgr.save(engine, step, {"step": step}, {"cursor": step})
    (tmp_path / "checkpoints" / "latest").unlink()
    mgr = CheckpointManager(tmp_path, keep_last=3, config_dict=cfg)
    with pytest.warns(UserWarning, match=r"latest is missing, but .* holds complete checkpoints \(step_00000001, "
                      r"step_00000002\): resuming from step_00000002"):  # fmt: skip
        assert mgr.load_latest(engine) == ({"step": 2}, {"cursor": 2})
    mgr.save(engine, 3, {"step": 3}, {"cursor": 3})
    assert mgr.latest_tag() == "step_00000003"
    assert mgr.complete_tags() == ["step_00000001", "step_00000002", "step_00000003"]


def test_marker_without_checksums_loads_with_a_warning_and_its_recipe_is_still_read(tmp_path, cfg):
    mgr, engine = CheckpointManager(tmp_path, keep_last=1, config_dict=cfg), FakeEngine()
    mgr.save(engine, 1, {"step": 1}, {"cursor": 3})
    tag_dir = tmp_path / "checkpoints" / "step_00000001"
    meta = json.loads((tag_dir / META).read_text())
    del meta["files"]  # what ard_scale wrote before checksums
    (tag_dir / META).write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="cannot be verified"):
        assert mgr.load_latest(engine) == ({"step": 1}, {"cursor": 3})
    (tag_dir / "config.yaml").write_text("train: [lr: {\n")
    with pytest.warns(UserWarning, match="cannot be verified"), pytest.raises(ValueError, match=r"config\.yaml: "):
        mgr.load_latest(engine)


class Counter:
    """A stateful piece: any object with state_dict / load_state_dict."""

    def __init__(self, value=0):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_tracked_pieces_round_trip_through_save_and_resume(tmp_path, cfg):
    """Global pieces go to the client state, per-rank ones to the rank file; resume restores each from its own."""
    mgr, engine = CheckpointManager(tmp_path, keep_last=2, config_dict=cfg), FakeEngine()
    pieces = {"progress": Counter(7), "data": Counter(70), "rng": ProcessRNG()}
    mgr.track("progress", pieces["progress"])
    mgr.track("data", pieces["data"], per_rank=True)
    mgr.track("rng", pieces["rng"], per_rank=True)
    assert mgr.resume(engine) is None  # fresh run: nothing touched
    torch.manual_seed(5)
    mgr.save_tracked(engine, 3)
    expected = torch.rand(4)  # what the RNG draws next after the save
    client, rank_state = mgr.load_latest(engine)
    assert client == {"progress": {"value": 7}} and set(rank_state) == {"data", "rng"}
    assert rank_state["data"] == {"value": 70}

    again = CheckpointManager(tmp_path, keep_last=2, config_dict=cfg)
    progress, data = Counter(), Counter()
    again.track("progress", progress)
    again.track("data", data, per_rank=True)
    again.track("rng", ProcessRNG(), per_rank=True)
    torch.manual_seed(99)
    resumed = again.resume(engine)
    assert resumed is not None and resumed.tag == "step_00000003" and resumed.same_world
    assert (progress.value, data.value) == (7, 70)
    assert torch.equal(torch.rand(4), expected)  # the RNG continues where the saved run was
    with pytest.raises(ValueError, match="'data' is taken"):
        again.track("data", Counter(), per_rank=True)


def test_resume_refuses_a_checkpoint_without_a_required_piece(tmp_path, cfg):
    mgr, engine = CheckpointManager(tmp_path, keep_last=2, config_dict=cfg), FakeEngine()
    mgr.track("progress", Counter(4))
    mgr.save_tracked(engine, 4)
    later = CheckpointManager(tmp_path, keep_last=2, config_dict=cfg)
    progress, heads, ema = Counter(), Counter(11), Counter(12)
    later.track("progress", progress)
    later.track("gan", heads, optional=True)  # optional: stays as built
    later.track("ema", ema, per_rank=True)  # required: refused, and nothing was loaded
    with pytest.raises(ValueError, match=r"holds no state for ema .*start a new run"):
        later.resume(engine)
    assert (progress.value, heads.value, ema.value) == (0, 11, 12)
    optional = CheckpointManager(tmp_path, keep_last=2, config_dict=cfg)
    optional.track("progress", progress)
    optional.track("gan", heads, optional=True)
    optional.track("ema", ema, per_rank=True, optional=True)
    resumed = optional.resume(engine)  # the trainer restarts an absent EMA from the resumed weights
    assert resumed.absent == ("gan", "ema") and (progress.value, heads.value, ema.value) == (4, 11, 12)


def test_export_of_a_checkpoint_that_is_not_there_names_the_ones_that_are(tmp_path):
    """`latest` naming a deleted folder, or a mistyped --tag, is named as such (not as a missing config.yaml)."""
    from ard_scale.checkpoint.export import resolve_tag

    ckpt = tmp_path / "checkpoints"
    (ckpt / "step_00000002").mkdir(parents=True)
    (ckpt / "step_00000002" / META).write_text("{}")
    (ckpt / "step_00000003").mkdir()  # a save that failed: no marker, not offered
    (ckpt / "latest").write_text("step_00000004")
    with pytest.raises(ValueError, match=r"latest names 'step_00000004'.*checkpoints there: step_00000002 \("):
        resolve_tag(ckpt, None)
    with pytest.raises(ValueError, match=r"tag 'step_2'.*does not exist; checkpoints there: step_00000002"):
        resolve_tag(ckpt, "step_2")
    assert resolve_tag(ckpt, "step_00000002") == "step_00000002"


def test_export_of_a_damaged_latest_names_the_earlier_complete_checkpoints_and_how_to_take_one(tmp_path, cfg):
    """A damaged `latest` blocked export, naming the file but not that an earlier checkpoint can be exported."""
    import importlib.util

    from ard_scale.checkpoint.export import load_student_weights

    mgr, engine = CheckpointManager(tmp_path / "run", keep_last=3, config_dict=cfg), FakeEngine()
    for step in (1, 2, 3):
        mgr.save(engine, step, {"step": step}, {"cursor": step})
    ckpt = tmp_path / "run" / "checkpoints"
    (ckpt / "step_00000001_universal").mkdir()  # a conversion carries its source's marker: not offered
    (ckpt / "step_00000001" / META).rename(ckpt / "step_00000001_universal" / META)  # step 1: incomplete
    victim = rank_file(ckpt / "step_00000003", 0)
    victim.write_bytes(victim.read_bytes()[:-1])  # truncated
    spec = importlib.util.spec_from_file_location("export_launcher", RECIPE.parents[1] / "launchers" / "export.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    damaged = rf"checkpoint {ckpt / 'step_00000003'} is damaged or unsafe: .*rank_00000\.pt: \d+ bytes, the marker"
    earlier = r"\. Complete earlier checkpoints there \(each verified as it is read\): step_00000002; "
    with pytest.raises(SystemExit) as stopped:
        launcher.main([str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert re.match(
        rf"error: {damaged}.*{earlier}export one of them instead: python launchers/export.py {tmp_path / 'run'} "
        r"--tag step_00000002 \(resuming the run falls back to the newest intact one by itself\)$",
        str(stopped.value.code),
    ), stopped.value.code
    assert not (tmp_path / "out").exists()
    with pytest.raises(
        ValueError, match=rf"{damaged}.*{earlier}to start from step_00000002, write step_00000002 into "
    ):
        load_student_weights(None, tmp_path / "run")  # gan.init_from takes the checkpoint `latest` names


def test_gan_init_from_a_run_of_another_teacher_family_names_the_teacher_not_the_student_section(tmp_path, monkeypatch):
    """A pixart run as gan.init_from in a DiT recipe was said to differ in "other ARD settings (family)"."""
    import ard_scale.checkpoint.export as export
    from ard_scale.checkpoint.student_meta import student_architecture
    from ard_scale.config.ard import ARDConfig
    from ard_scale.diffusion.schedules import VPSchedule
    from ard_scale.models.student import ARDStudent
    from ard_scale.models.teachers import build_teacher

    student = ARDStudent(
        build_teacher("dit", "debug", num_embeds_ada_norm=10), ARDConfig(num_steps=4, num_causal_layers=2), VPSchedule()
    )
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    saved = {**student_architecture(student), "family": "pixart"}  # what a PixArt regression run's checkpoint holds
    monkeypatch.setattr(export, "student_state_dict", lambda *a, **k: ({}, saved, "step_00000006", "ema"))
    with pytest.raises(ValueError) as refused:
        export.load_student_weights(student, tmp_path / "run")
    assert str(refused.value) == (
        f"gan.init_from: {tmp_path / 'run'} holds a pixart student, and this recipe's teacher is teacher.family=dit: "
        "the GAN stage starts from a regression run of its own teacher; give that run's teacher section "
        "(teacher.family=pixart), or a dit run as gan.init_from"
    )


def test_gan_init_from_accepts_a_run_differing_only_in_attention_kernel_or_teacher_sharing(tmp_path, monkeypatch):
    """student.attention and student.lora.share_teacher give the same numbers (README; not in the config hash), but a
    GAN stage setting either otherwise than its regression run was refused as "other ARD settings"."""
    import ard_scale.checkpoint.export as export
    from ard_scale.checkpoint.student_meta import student_architecture
    from ard_scale.config.ard import ARDConfig, LoRAConfig
    from ard_scale.diffusion.schedules import VPSchedule
    from ard_scale.models.student import ARDStudent
    from ard_scale.models.teachers import build_teacher

    lora = LoRAConfig(rank=2, share_teacher=False)
    student = ARDStudent(
        build_teacher("dit", "debug", num_embeds_ada_norm=10),
        ARDConfig(num_steps=4, num_causal_layers=2, attention="sdpa", lora=lora),
        VPSchedule(),
    )
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    arch = student_architecture(student)
    shared = {**arch["ard"]["lora"], "share_teacher": True}
    saved = {**arch, "ard": {**arch["ard"], "attention": "auto", "lora": shared}}
    state = {k: v.clone() for k, v in student.state_dict().items()}
    monkeypatch.setattr(export, "student_state_dict", lambda *a, **k: (state, saved, "step_00000006", "ema"))
    export.load_student_weights(student, tmp_path / "run")
    saved["ard"]["num_causal_layers"] = 1  # a real difference is still refused
    with pytest.raises(ValueError, match=r"other ARD settings \(num_causal_layers: 1 there, 2 here\)"):
        export.load_student_weights(student, tmp_path / "run")
