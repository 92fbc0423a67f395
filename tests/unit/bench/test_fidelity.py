"""bench/fidelity.py at a tiny size: it runs end to end and writes its JSON and plot, its figures are deterministic
for fixed seeds, its Fréchet distance of a set to itself is ~0 and grows with a shift, evaluation noise is never the
training pool's and the batch order depends on the seed. No assertion on the outcome of the N=0/ARD comparison."""

import json
import math

import pytest
import torch

from bench import fidelity

TINY = [
    "--resolution", "8", "--copies", "1", "--width", "32", "--layers", "2", "--teacher-steps", "8",
    "--classifier-steps", "5", "--substeps", "2", "--num-causal-layers", "1", "--pool", "32", "--train-steps", "2",
    "--batch-size", "8", "--seeds", "0", "1", "--gan-steps", "2", "--samples", "30", "--eval-batch", "30",
    "--gan", '{"head_hidden": 8, "layers": [1]}',
]  # fmt: skip


def tiny(*extra):
    settings, _ = fidelity.parse([*TINY, *extra])
    return settings


@pytest.fixture(scope="module")
def tiny_result():
    return fidelity.run(tiny(), log=lambda *_: None)


def test_runs_end_to_end_and_writes_json_and_plot(tmp_path):
    sweep = ["--gan-sweep", '[{"adaptive_lambda": 1.0}]']
    out = fidelity.main([*TINY, *sweep, "--json", str(tmp_path / "f.json"), "--plot", str(tmp_path / "fidelity.png")])
    saved = json.loads((tmp_path / "f.json").read_text())
    assert set(saved["students"]) == {"N0", "N1_causal"}
    assert [row["seed"] for row in saved["students"]["N0"]] == [0, 1]
    assert len(saved["degradation_ratio_per_seed"]) == 2 and len(saved["gan"]) == 2
    for key in ("degradation_ratio", "gan_fd_minus_r_fd"):
        assert isinstance(saved[key], float) and not math.isnan(saved[key])
    assert saved["gan_fd_minus_r_fd"] == out["gan_fd_minus_r_fd"]
    assert [(row["seed"], row["gan"]) for row in saved["gan_sweep"]] == [(0, {"adaptive_lambda": 1.0})]
    assert (tmp_path / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figures_are_deterministic_for_fixed_seeds(tiny_result):
    again = fidelity.run(tiny(), log=lambda *_: None)
    for name, rows in tiny_result["students"].items():
        assert [(r["mse"], r["fd"], r["accuracy"]) for r in rows] == [
            (r["mse"], r["fd"], r["accuracy"]) for r in again["students"][name]
        ]
    assert tiny_result["teacher"]["fd"] == again["teacher"]["fd"]
    assert [row["fd_minus"] for row in tiny_result["gan"]] == [row["fd_minus"] for row in again["gan"]]


def test_mask_variants_are_trained_beside_the_default():
    result = fidelity.run(
        tiny("--masks", "causal", "diagonal", "--gan-steps", "0", "--seeds", "0"), log=lambda *_: None
    )
    assert set(result["students"]) == {"N0", "N1_causal", "N1_diagonal"}
    assert result["gan"] == [] and result["gan_fd_minus_r_fd"] is None


def test_frechet_distance_of_a_set_to_itself_is_zero_and_grows_with_a_shift():
    s = tiny()
    data = fidelity.augmented_digits(s)
    classifier, _ = fidelity.fit_classifier(data, s)
    x, y = data["held_x"], data["held_y"]
    reference = fidelity.gaussian(classifier.features(x))
    same = fidelity.score(x, y, x, classifier, reference)
    assert abs(same["fd"]) < 1e-6 and same["mse"] == 0
    distances = [fidelity.score(x + d, y, x, classifier, reference)["fd"] for d in (0.25, 0.5, 1.0)]
    assert 1e-3 < distances[0] < distances[1] < distances[2]


def test_evaluation_noise_is_not_the_training_pools():
    """Training index i and evaluation index i: seeds equal in their low 32 bits drew the same noise before Draws."""
    s = tiny()
    schedule = fidelity.VPSchedule()
    teacher = fidelity.build_teacher("dit", "debug", seed=0, num_layers=2, in_channels=1, out_channels=2, sample_size=8)
    pool_seeds = [fidelity.noise_seed(fidelity.Stream.TRAIN, 0, i) for i in range(4)]
    eval_seeds = fidelity.eval_seeds(4)
    labels = torch.arange(4)
    pool = fidelity.trajectories(teacher, schedule, s, pool_seeds, labels)[:, 0]
    evaluation = fidelity.trajectories(teacher, schedule, s, eval_seeds, labels)[:, 0]
    assert not any(torch.equal(a, b) for a in pool for b in evaluation)


def test_batch_order_depends_on_the_seed():
    a, b = (fidelity.batch_indices(1000, 16, seed, step=3) for seed in (0, 1))
    assert not torch.equal(a, b)
    assert torch.equal(a, fidelity.batch_indices(1000, 16, 0, step=3))
