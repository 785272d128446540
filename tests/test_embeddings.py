"""The timestep embedding of chapter 02: values worked out by hand, the properties the U-Net relies on at the sizes
it uses (d = 16 for the bundled 'cpu32' model, 64 for 'faces64'), refusals, and the MLP against its formula."""
import math
import numpy as np
import pytest
import torch
from face_diffusion.embeddings import TimestepEmbedding, check_embedding_dim, timestep_embedding
from face_diffusion.unet import UNetConfig


def by_hand(w1):
    "e(1) for d = 4: [sin 1, sin ω_1, cos 1, cos ω_1], with ω_0 = 1."
    return torch.tensor([[math.sin(1), math.sin(w1), math.cos(1), math.cos(w1)]], dtype=torch.float64)


def test_values_worked_out_by_hand_for_two_max_periods():
    "d = 4: ω_1 = P^(−1/2) is 0.01 for P = 10 000 and 0.1 for P = 100 (code that ignores max_period fails the second)."
    assert torch.allclose(timestep_embedding(torch.tensor([1]), 4).double(), by_hand(0.01), atol=1e-6)
    assert torch.allclose(timestep_embedding(torch.tensor([1]), 4, max_period=100.0).double(), by_hand(0.1), atol=1e-6)
    assert torch.allclose(timestep_embedding(0, 6).double(), torch.tensor([[0.0] * 3 + [1.0] * 3], dtype=torch.float64))


@pytest.mark.parametrize('d', [16, 64])
def test_properties_at_the_sizes_the_networks_use(d):
    "Bounded, of length √(d/2), distinct, distance by the gap formula, a neighbour the closest (chapter 02)."
    emb = timestep_embedding(torch.arange(1000), d).double()
    assert emb.shape == (1000, d) and emb.abs().max() <= 1 + 1e-6
    assert torch.allclose(emb.norm(dim=1), torch.full((1000,), math.sqrt(d / 2), dtype=torch.float64), atol=1e-4)
    assert torch.cdist(emb, emb).fill_diagonal_(math.inf).min() > 0.2 * math.sqrt(d / 2)     # distinct
    gaps = torch.arange(1, 1000)
    d_gap = (emb[1:] - emb[0]).norm(dim=1)                                                  # ‖e(Δ) − e(0)‖
    omegas = torch.exp(-math.log(10_000) * torch.arange(d // 2, dtype=torch.float64) / (d // 2))   # ω_i = P^(−i/h)
    assert torch.allclose(d_gap ** 2, (2 - 2 * torch.cos(gaps[:, None] * omegas)).sum(1), atol=1e-3)   # Σ (2 − 2 cos ω_i Δ)
    for t0 in (7, 500):                                                                     # only the gap matters
        assert torch.allclose((emb[t0 + 1:t0 + 400] - emb[t0]).norm(dim=1), d_gap[:399], atol=1e-3)
    assert d_gap[0] < d_gap[1:].min()                                                       # a neighbour is the closest
    mid = timestep_embedding(torch.tensor([300.5]), d).double()[0]                          # float t: between neighbours
    assert (mid - emb[300]).norm() < (emb[301] - emb[300]).norm() and (mid - emb[301]).norm() < (emb[301] - emb[300]).norm()


@pytest.mark.parametrize('t', [5, 5.0, torch.tensor(5), torch.tensor([5]), torch.tensor([5], dtype=torch.int32)])
def test_any_kind_of_timestep_gives_the_same_float32_row(t):
    e = timestep_embedding(t, 16)
    assert e.shape == (1, 16) and e.dtype == torch.float32 and torch.equal(e, timestep_embedding(torch.tensor([5]), 16))


@pytest.mark.parametrize('dim, says', [(1, 'is too small'), (0, 'is too small'), (7, 'dim = 7 is odd; use an even number'),
                                       (127, 'such as 126 or 128'), (128.0, 'must be a whole number, got 128.0'),
                                       (True, 'must be a whole number'), ('128', 'must be a whole number')])
def test_bad_sizes_are_refused_in_one_line(dim, says):
    for make in (lambda: timestep_embedding(3, dim), lambda: TimestepEmbedding(dim), lambda: check_embedding_dim(dim)):
        with pytest.raises(ValueError, match=says) as err: make()
        assert '\n' not in str(err.value)


def test_whole_numbers_of_other_types_are_accepted():
    assert check_embedding_dim(np.int64(8)) == 8 and timestep_embedding(3, np.int64(8)).shape == (1, 8)


def test_an_odd_base_channels_is_refused_by_the_unet_configuration():
    "base_channels is also the embedding size d of the U-Net's time embedding."
    with pytest.raises(ValueError, match='base_channels must be even') as err:
        UNetConfig.preset('cpu32', base_channels=15)
    assert '\n' not in str(err.value)
    with pytest.raises(ValueError, match='base_channels must be even'):
        UNetConfig(kind='simple', image_size=32, base_channels=5, channel_mults=(1, 2))


def test_timesteps_must_be_at_most_one_dimensional():
    with pytest.raises(ValueError, match='flatten them first'):
        timestep_embedding(torch.zeros(2, 2), 8)


def test_the_mlp_is_w2_silu_w1_e_plus_b1_plus_b2():
    torch.manual_seed(0)
    temb = TimestepEmbedding(16, hidden_dim=40)
    t = torch.tensor([0, 1, 2.5, 999])
    (W1, b1), (W2, b2) = (temb.mlp[0].weight, temb.mlp[0].bias), (temb.mlp[2].weight, temb.mlp[2].bias)
    with torch.no_grad():
        z = timestep_embedding(t, 16) @ W1.T + b1                                           # W_1 e(t) + b_1
        expected = (z * torch.sigmoid(z)) @ W2.T + b2                                       # W_2 SiLU(z) + b_2
        assert torch.allclose(temb(t), expected, atol=1e-5) and temb(t).shape == (4, 40)
        assert not torch.allclose(temb(torch.tensor([2.5])), temb(torch.tensor([2])), atol=1e-4)   # 2.5 is not rounded
