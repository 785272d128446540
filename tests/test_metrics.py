"Metrics: SWD behaviour and bad input, the memorisation check, and FID (error path without weights, plumbing with a custom net)."
import socket
import time

import pytest
import torch

from face_diffusion.data import synthetic_faces, to_float
from face_diffusion.metrics import (INCEPTION_WEIGHTS_FILE, fid, frechet_distance, inception_weights_path,
                                    laplacian_pyramid, nearest_neighbours, sliced_wasserstein, sliced_wasserstein_points,
                                    swd_floor, swd_multiple)


FAST = dict(patches_per_image=16, n_directions=64)   # small settings: tests check behaviour, not precision


@pytest.fixture(scope="module")
def faces():
    "Three independent sets of 32 px synthetic faces: reference, held-out, and 'samples'."
    return [synthetic_faces(128, size=32, seed=s)[0] for s in (1, 2, 3)]


def test_swd_is_seeded_and_accepts_uint8_or_float(faces):
    ref, held, _ = faces
    a = sliced_wasserstein(ref, held, seed=3, **FAST)
    assert a.levels == sliced_wasserstein(ref, held, seed=3, **FAST).levels
    assert a.levels != sliced_wasserstein(ref, held, seed=4, **FAST).levels
    assert a.levels == pytest.approx(sliced_wasserstein(to_float(ref), to_float(held), seed=3, **FAST).levels)
    assert list(a.levels) == [32, 16]
    one_face = ref[:1].expand(8, -1, -1, -1)                 # every patch drawn is the same in both sets
    assert sliced_wasserstein(one_face, one_face.clone()).mean == 0


def test_pyramid_of_a_flat_image_has_no_detail():
    "Band-pass levels ≈ 0 and a flat residual: fails for an `up` that loses brightness, which still rebuilds exactly."
    levels = laplacian_pyramid(torch.full((2, 3, 64, 64), -0.4), min_size=8)
    assert [l.shape[-1] for l in levels] == [64, 32, 16, 8]
    assert all(l.abs().max() < 1e-5 for l in levels[:-1])
    assert torch.allclose(levels[-1], torch.full_like(levels[-1], -0.4), atol=1e-5)


def test_swd_does_not_depend_on_the_order_of_the_points():
    "A version that forgets to sort passes the self-distance and shift checks, but not this one."
    g = torch.Generator().manual_seed(0)
    cloud = torch.randn(500, 7, generator=g)
    assert sliced_wasserstein_points(cloud, cloud[torch.randperm(500, generator=g)], generator=g) < 1e-6
    assert sliced_wasserstein_points(cloud, cloud + 1.0, generator=g) > 0.1


def test_swd_multiple_separates_real_from_corrupted(faces):
    ref, held, other = faces
    real = swd_multiple(other, ref, held, **FAST)
    noise = swd_multiple(torch.randn(128, 3, 32, 32, generator=torch.Generator().manual_seed(0)).clamp(-1, 1), ref, held,
                         **FAST)
    assert 0.5 < real < 2 and noise > 10 * real
    per_level = swd_multiple(other, ref, held, **FAST, per_level=True)
    assert set(per_level.levels) == {32, 16}
    floor_64 = swd_floor(ref, held, n=64, **FAST)
    assert swd_floor(ref, held, n=32, **FAST).mean > floor_64.mean    # the floor falls as n grows
    averaged = swd_floor(ref[:32], held, n=32, **FAST)               # 4 draws of 32 held-out faces, averaged
    singles = [sliced_wasserstein(held[k * 32:(k + 1) * 32], ref[:32], **FAST) for k in range(4)]
    assert averaged.mean == pytest.approx(sum(s.mean for s in singles) / 4)


@pytest.mark.parametrize("call, match", [
    (lambda: sliced_wasserstein(torch.zeros(4, 3, 32, 32), torch.zeros(4, 3, 16, 16)), "same C×H×W"),
    (lambda: sliced_wasserstein(torch.zeros(1, 3, 32, 32), torch.zeros(4, 3, 32, 32)), "at least 2"),
    (lambda: laplacian_pyramid(torch.zeros(2, 3, 8, 8)), "at least 16"),
    (lambda: laplacian_pyramid(torch.zeros(3, 32, 32)), "N×C×H×W"),
    (lambda: swd_multiple(torch.zeros(4, 3, 32, 32), torch.zeros(4, 3, 32, 32), torch.zeros(4, 3, 32, 32), n=8), "smaller n"),
    (lambda: nearest_neighbours(torch.zeros(2, 3, 32, 32), torch.zeros(5, 3, 16, 16)), "same size"),
    (lambda: nearest_neighbours(torch.zeros(2, 3, 32, 32), torch.zeros(1, 3, 32, 32)), "at least 2"),
])
def test_bad_input_is_a_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_nearest_neighbours_flags_copies_not_fresh_faces(faces):
    train, fresh, _ = faces
    samples = torch.cat([train[[5, 60]], fresh[:6]])
    nn = nearest_neighbours(samples, train, chunk=50)       # several chunks: the running top-2 must merge correctly
    assert nn.index[:2].tolist() == [5, 60]
    assert nn.ratio[:2].max() < 0.01 and nn.copied[:2].all()
    assert not nn.copied[2:].any()
    # brute force agrees
    d = torch.cdist(to_float(samples).flatten(1), to_float(train).flatten(1))
    best = d.topk(2, dim=1, largest=False)
    assert torch.equal(nn.index, best.indices[:, 0])
    assert torch.allclose(nn.distance, best.values[:, 0], atol=1e-3)
    assert torch.allclose(nn.second_distance, best.values[:, 1], atol=1e-3)


def test_memorisation_ratio_is_near_zero_for_copies_and_well_above_the_threshold_for_new_faces(faces):
    "The claims chapter 08 rests on: ρ ≈ 0 for copies, exact or saved lossily; ρ well above 1/3 for faces never trained on."
    train, fresh, _ = faces
    g = torch.Generator().manual_seed(0)
    lossy = (to_float(train[:8]) + 0.02 * torch.randn(8, 3, 32, 32, generator=g)).clamp(-1, 1)   # about ±3 grey levels
    copies = nearest_neighbours(torch.cat([to_float(train[:8]), lossy]), train, chunk=50)
    assert copies.index.tolist() == list(range(8)) * 2
    assert copies.ratio[:8].max() < 0.01 and copies.ratio[8:].max() < 0.2 and copies.copied.all()
    new = nearest_neighbours(fresh, train, chunk=50)
    assert new.ratio.median() > 0.6 and not new.copied.any()          # measured: median 0.94, lowest 0.75


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    "An empty torch hub cache and no network: any download attempt fails loudly."
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    def refuse(*args, **kwargs): raise AssertionError("a download was attempted")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return tmp_path


def test_fid_without_weights_fails_fast_with_one_line(no_network):
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        fid(images, images)
    message = str(info.value)
    assert time.perf_counter() - start < 1
    assert "\n" not in message and INCEPTION_WEIGHTS_FILE in message
    assert str(no_network / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE) in message   # says where to put it
    with pytest.raises(FileNotFoundError, match="no Inception weights at"):
        fid(images, images, weights=no_network / "missing.pth")
    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS_FILE):
        inception_weights_path(no_network)                      # a folder without the file


def test_fid_finds_weights_in_the_hub_cache_or_a_folder(no_network):
    cached = no_network / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert inception_weights_path() == cached
    assert inception_weights_path(cached.parent) == cached


def test_fid_plumbing_with_a_custom_feature_net(faces):
    pytest.importorskip("torchmetrics")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    real = to_float(faces[0])
    shifted = [(real + s).clamp(-1, 1) for s in (0.0, 0.1, 0.3)]
    values = [fid(real, x, feature=net, batch_size=50) for x in shifted]
    assert abs(values[0]) < 1e-4 * values[2]
    assert values[0] < values[1] < values[2]
    with torch.no_grad():
        direct = frechet_distance(net(real), net(shifted[2]))
    assert values[2] == pytest.approx(direct, rel=1e-3)
    assert fid(faces[0], faces[1], feature=net) == pytest.approx(fid(real, to_float(faces[1]), feature=net), rel=1e-5)


def test_frechet_distance_of_known_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    b = 2 * torch.randn(20000, 3, generator=g, dtype=torch.float64) + 1
    # N(0, I) vs N(1, 4I) in 3-D: ‖μ‖² = 3, tr(I + 4I − 2·2I) = 3
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)


def test_fid_inception_path_with_a_local_weights_file(no_network, monkeypatch):
    "The Inception route end to end (uint8 → 299 px → features → FID) on a weights file of random values: no download."
    pytest.importorskip("torchmetrics")
    inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    with monkeypatch.context() as m:                       # build the network once without loading weights
        m.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state_dict: None)
        empty = no_network / "empty.pth"
        torch.save({}, empty)
        torch.manual_seed(0)
        net = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["64"], feature_extractor_weights_path=str(empty))
    weights = no_network / INCEPTION_WEIGHTS_FILE
    torch.save(net.state_dict(), weights)
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    same = fid(real, real, weights=weights, dims=64)
    darker = fid(real, real // 4, weights=no_network, dims=64)         # a folder holding the file works too
    assert darker > 0 and abs(same) < 1e-3 * darker
    with pytest.raises(ValueError, match="dims=100"):
        fid(real, real, weights=weights, dims=100)
