"""The ADM protocol end to end with a tiny stand-in detector: metrics, reference kinds, checks, reference building."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from irepa.errors import IrepaError
from irepa.metrics.generative.evaluator import (
    EvalSettings,
    ImageSource,
    build_reference,
    evaluate_adm,
    label_balance,
    read_reference,
)
from irepa.metrics.generative.scores import inception_score, precision_recall
from irepa.metrics.generative.stats import FeatureStatistics, frechet_distance


def features_of(detector, images):
    out = detector(torch.from_numpy(images).permute(0, 3, 1, 2))
    return out


@pytest.fixture
def files(tmp_path, random_images):
    samples = random_images(40, seed=1)
    ref_images = random_images(30, seed=2, offset=20)
    np.savez(tmp_path / "samples.npz", samples, labels=np.arange(40) % 4)
    np.savez(tmp_path / "ref_images.npz", ref_images)
    return tmp_path, samples, ref_images


def test_metrics_match_direct_computation(files, tiny_detector):
    tmp, samples, ref_images = files
    result = evaluate_adm(
        tmp / "samples.npz", tmp / "ref_images.npz", tiny_detector, settings=EvalSettings(batch_size=7)
    )
    fs, fr = features_of(tiny_detector, samples), features_of(tiny_detector, ref_images)
    want_fid = frechet_distance(FeatureStatistics.from_features(fs.pool), FeatureStatistics.from_features(fr.pool))
    want_sfid = frechet_distance(
        FeatureStatistics.from_features(fs.spatial), FeatureStatistics.from_features(fr.spatial)
    )
    m = result["metrics"]
    assert list(m) == ["inception_score", "fid", "sfid", "precision", "recall"]  # ADM's order
    assert m["fid"] == pytest.approx(want_fid, rel=1e-6)
    assert m["sfid"] == pytest.approx(want_sfid, rel=1e-6)
    assert m["inception_score"] == pytest.approx(inception_score(fs.logits), rel=1e-6)
    assert (m["precision"], m["recall"]) == precision_recall(fr.pool, fs.pool)
    assert result["reference"]["statistics"] == "computed from arr_0"
    assert result["samples"]["labels"]["exactly_balanced"]
    assert result["evaluator"]["settings"]["batch_size"] == 7
    json.dumps(result)  # JSON-ready


def test_identical_sets_give_zero_fid_and_full_pr(files, tiny_detector):
    tmp, samples, _ = files
    np.savez(tmp / "same.npz", samples)
    m = evaluate_adm(tmp / "samples.npz", tmp / "same.npz", tiny_detector)["metrics"]
    assert abs(m["fid"]) < 1e-6 and abs(m["sfid"]) < 1e-6
    assert m["precision"] == 1.0 and m["recall"] == 1.0


def test_stats_only_references(files, tiny_detector):
    tmp, _, ref_images = files
    fr = features_of(tiny_detector, ref_images)
    pool, spatial = FeatureStatistics.from_features(fr.pool), FeatureStatistics.from_features(fr.spatial)
    np.savez(tmp / "stats.npz", mu=pool.mu, sigma=pool.sigma, mu_s=spatial.mu, sigma_s=spatial.sigma)
    np.savez(tmp / "mu_only.npz", mu=pool.mu, sigma=pool.sigma)  # e.g. MAR/JiT statistics files
    full = evaluate_adm(tmp / "samples.npz", tmp / "ref_images.npz", tiny_detector)
    stats = evaluate_adm(tmp / "samples.npz", tmp / "stats.npz", tiny_detector)
    assert stats["metrics"]["fid"] == pytest.approx(full["metrics"]["fid"], rel=1e-9)
    assert stats["metrics"]["sfid"] == pytest.approx(full["metrics"]["sfid"], rel=1e-9)
    assert stats["metrics"]["precision"] is None and any("precision" in n for n in stats["notes"])
    mu_only = evaluate_adm(tmp / "samples.npz", tmp / "mu_only.npz", tiny_detector)
    assert mu_only["metrics"]["sfid"] is None and mu_only["metrics"]["fid"] == stats["metrics"]["fid"]


def test_reference_errors(tmp_path, random_images):
    np.savez(tmp_path / "empty.npz", labels=np.zeros(3))
    with pytest.raises(IrepaError, match="neither statistics"):
        read_reference(tmp_path / "empty.npz")
    np.savez(tmp_path / "half.npz", mu=np.zeros(3))
    with pytest.raises(IrepaError, match="mu/sigma"):
        read_reference(tmp_path / "half.npz")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"mu": np.zeros(4), "sigma": np.full((4, 4), np.nan)}, "mu/sigma: the covariance holds 16 non-finite"),
        ({"mu": np.array([0, np.inf, 0, 0]), "sigma": np.eye(4)}, "mu/sigma: the mean holds 1 non-finite"),
        ({"mu": np.zeros(4), "sigma": np.eye(4) + np.triu(np.ones((4, 4)), 1)}, "mu/sigma: the covariance is not sym"),
        ({"mu": np.zeros(4), "sigma": np.eye(3)}, "mu/sigma: feature statistics need mu (D,) and sigma (D, D)"),
        ({"mu": np.zeros(2), "sigma": np.eye(2), "mu_s": np.zeros(2), "sigma_s": np.ones((2, 2)) * np.nan}, "mu_s/sig"),
    ],
)
def test_invalid_stored_statistics_are_refused_naming_the_file(tmp_path, arrays, message):
    np.savez(tmp_path / "r.npz", **arrays)
    with pytest.raises(IrepaError, match="reference '.*r.npz' " + message.replace("(", r"\(").replace(")", r"\)")):
        read_reference(tmp_path / "r.npz")


def test_sample_count_is_named_as_fid_n_and_identical_sets_give_a_non_negative_fid(files, tiny_detector):
    tmp, samples, _ = files
    np.savez(tmp / "same.npz", samples)
    result = evaluate_adm(tmp / "samples.npz", tmp / "same.npz", tiny_detector)
    assert any(n.startswith("40 samples: FID-40 is biased") for n in result["notes"]), result["notes"]
    assert result["metrics"]["fid"] >= 0.0 and result["metrics"]["sfid"] >= 0.0


def test_sample_file_checks(files, tiny_detector, random_images):
    tmp, samples, _ = files
    ref = tmp / "ref_images.npz"
    with pytest.raises(IrepaError, match="fewer than the 41 requested"):
        evaluate_adm(tmp / "samples.npz", ref, tiny_detector, num_samples=41)
    bad = samples.astype(np.float32)
    bad[3, 0, 0, 0] = np.nan
    np.savez(tmp / "nan.npz", bad)
    with pytest.raises(IrepaError, match="1 non-finite"):
        evaluate_adm(tmp / "nan.npz", ref, tiny_detector)
    np.savez(tmp / "nchw.npz", samples.transpose(0, 3, 1, 2))
    with pytest.raises(IrepaError, match="NCHW"):
        evaluate_adm(tmp / "nchw.npz", ref, tiny_detector)
    np.savez(tmp / "wrongkey.npz", images=samples)
    with pytest.raises(IrepaError, match="arr_0"):
        evaluate_adm(tmp / "wrongkey.npz", ref, tiny_detector)
    np.savez(tmp / "badlabels.npz", samples, labels=np.zeros(3, dtype=np.int64))
    with pytest.raises(IrepaError, match="labels"):
        evaluate_adm(tmp / "badlabels.npz", ref, tiny_detector)


def test_size_mismatch_refused_unless_allowed(files, tiny_detector, random_images):
    tmp, _, _ = files
    np.savez(tmp / "big_ref.npz", random_images(12, size=32))
    with pytest.raises(IrepaError, match="16x16 but the reference images are 32x32"):
        evaluate_adm(tmp / "samples.npz", tmp / "big_ref.npz", tiny_detector)
    result = evaluate_adm(
        tmp / "samples.npz", tmp / "big_ref.npz", tiny_detector, settings=EvalSettings(allow_size_mismatch=True)
    )
    assert any("allowed" in n for n in result["notes"])


def test_num_samples_uses_the_first_n(files, tiny_detector):
    tmp, samples, _ = files
    np.savez(tmp / "first25.npz", samples[:25])
    a = evaluate_adm(tmp / "samples.npz", tmp / "ref_images.npz", tiny_detector, num_samples=25)
    b = evaluate_adm(tmp / "first25.npz", tmp / "ref_images.npz", tiny_detector)
    assert a["metrics"] == b["metrics"]
    assert a["samples"]["num_samples"] == 25 and a["samples"]["num_available"] == 40


def test_guided_diffusion_arr_1_labels(files, tiny_detector):
    tmp, samples, _ = files
    np.savez(tmp / "adm_style.npz", samples, np.zeros(40, dtype=np.int64))
    result = evaluate_adm(tmp / "adm_style.npz", tmp / "ref_images.npz", tiny_detector)
    assert result["samples"]["labels"]["classes_present"] == 1


def test_label_balance():
    report = label_balance(np.array([0, 1, 2, 0, 1, 2]))
    assert report["exactly_balanced"] and report["min_per_class"] == 2
    report = label_balance(np.array([0, 0, 0, 1]), num_classes=3)
    assert not report["exactly_balanced"] and report["classes_present"] == 2 and report["min_per_class"] == 0


def test_build_reference_from_npz_and_cached_features(files, tiny_detector):
    tmp, _, ref_images = files
    summary = build_reference(
        ImageSource(tmp / "ref_images.npz"), tmp / "ref.npz", tiny_detector, detector_id="abc", keep_images=10
    )
    assert summary["stored_images"] == 10
    ref = read_reference(tmp / "ref.npz")
    fr = features_of(tiny_detector, ref_images)
    np.testing.assert_allclose(ref.pool.mu, FeatureStatistics.from_features(fr.pool).mu, rtol=1e-6)
    np.testing.assert_allclose(ref.spatial.sigma, FeatureStatistics.from_features(fr.spatial).sigma, atol=1e-9)
    assert ref.num_images == 10 and ref.image_size == (16, 16)
    with np.load(tmp / "ref.npz") as z:  # the stored subset is a subset of the source images
        kept = z["arr_0"]
        assert all(any(np.array_equal(k, r) for r in ref_images) for k in kept)
    # Cached pool features are used with the same detector id, recomputed with another one.
    calls = tiny_detector.calls
    cached = evaluate_adm(tmp / "samples.npz", tmp / "ref.npz", tiny_detector, detector_id="abc")
    used = tiny_detector.calls - calls
    calls = tiny_detector.calls
    fresh = evaluate_adm(tmp / "samples.npz", tmp / "ref.npz", tiny_detector, detector_id="other")
    assert tiny_detector.calls - calls > used
    assert cached["reference"]["pool_features"] == "cached"
    assert fresh["reference"]["pool_features"] == "computed from arr_0"
    assert cached["metrics"]["precision"] == pytest.approx(fresh["metrics"]["precision"])
    assert cached["metrics"]["fid"] == pytest.approx(fresh["metrics"]["fid"])


def test_build_reference_from_folder(tmp_path, tiny_detector, random_images):
    images = random_images(6, size=20)
    for i, im in enumerate(images):
        (tmp_path / "imgs" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(tmp_path / "imgs" / f"c{i % 2}" / f"{i}.png")
    source = ImageSource(tmp_path / "imgs", resolution=16)
    assert len(source) == 6 and source.image_size == (16, 16)
    build_reference(source, tmp_path / "ref.npz", tiny_detector, detector_id="x", keep_images=100)
    ref = read_reference(tmp_path / "ref.npz")
    assert ref.num_images == 6 and ref.image_size == (16, 16)
