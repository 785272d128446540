"""The U-Net of chapter 03: shapes, refusals, time dependence, gradients, JSON round trip, batch independence."""
import json
import pytest
import torch
from torch import nn
from face_diffusion.unet import (KINDS, PRESETS, UNetConfig, build_unet, count_parameters, flops_per_image,
                                 SelfAttention, SimpleUNet, UNet, check_image_size)


def small(kind='modern', size=32, channels=3, **kw):
    "A narrow 3-level network: the presets' code paths at a fraction of the cost."
    return UNetConfig(kind=kind, image_size=size, in_channels=channels, base_channels=8, channel_mults=(1, 2, 2),
                      num_res_blocks=1, attention_resolutions=(size // 4,), head_channels=8, groups=4, **kw)


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('size', [16, 32, 64, 128])
@pytest.mark.parametrize('channels', [1, 3])
def test_output_shape_equals_input_shape(kind, size, channels):
    model = build_unet(small(kind, size, channels)).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        assert model(x, torch.tensor([0, 999])).shape == x.shape


def test_presets_build_the_promised_sizes():
    with torch.device('meta'):
        n = {name: count_parameters(build_unet(name)) for name in PRESETS}
        assert flops_per_image(build_unet('faces64')) > flops_per_image(build_unet('cpu32'))
    assert n['tiny'] < 0.3e6 and 1e6 <= n['cpu32'] <= 3e6 and 30e6 <= n['faces64'] <= 40e6
    assert isinstance(build_unet('tiny'), UNet)
    assert isinstance(build_unet(small('simple')), SimpleUNet)
    with pytest.raises(ValueError, match='tiny, cpu32, faces64'):
        UNetConfig.preset('huge')


@pytest.mark.parametrize('size', [50, 20, 12, 3])
def test_size_that_cannot_be_halved_is_refused_with_sizes_that_work(size):
    model = build_unet(UNetConfig.preset('cpu32'))                  # 3 halvings: multiples of 8
    with pytest.raises(ValueError) as err:
        model(torch.randn(1, 3, size, size), torch.tensor([1]))
    msg = str(err.value)
    assert '\n' not in msg and f'image size {size} cannot be halved 3 times; use a multiple of 8' in msg
    lo, hi = (int(s) for s in msg.split('e.g. ')[1].split(' or '))
    with torch.no_grad():                                            # the suggested sizes do work
        for ok in (lo, hi):
            assert model(torch.randn(1, 3, ok, ok), torch.tensor([1])).shape == (1, 3, ok, ok)
    with pytest.raises(ValueError, match='cannot be halved'):
        UNetConfig.preset('cpu32', image_size=size)


def test_bad_inputs_and_configs_are_refused_in_one_line():
    model = build_unet(small())
    bad_calls = [(torch.randn(2, 1, 32, 32), torch.tensor([1, 2])),      # channels
                 (torch.randn(2, 3, 32, 32), torch.tensor([1, 2, 3])),   # t does not match the batch
                 (torch.randn(3, 32, 32), torch.tensor([1]))]            # no batch dimension
    for x, t in bad_calls:
        with pytest.raises(ValueError) as err: model(x, t)
        assert '\n' not in str(err.value)
    for bad in [dict(kind='vit'), dict(groups=3), dict(attention_resolutions=(7,)), dict(dropout=1.0),
                dict(head_channels=5), dict(in_channels=0), dict(channel_mults=())]:
        with pytest.raises(ValueError) as err: UNetConfig.preset('tiny', **bad)
        assert '\n' not in str(err.value)
    with pytest.raises(ValueError, match='unknown UNetConfig keys'):
        UNetConfig.from_dict({**UNetConfig().to_dict(), 'depth': 3})
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32), 7).shape == (2, 3, 32, 32)         # scalar t: the whole batch
        assert model(torch.randn(2, 3, 32, 32), torch.tensor([0.5, 9.5])).shape == (2, 3, 32, 32)  # float t


@pytest.mark.parametrize('kind', KINDS)
def test_output_depends_on_t(kind):
    model = build_unet(small(kind, zero_init=False)).eval()
    x = torch.randn(1, 3, 32, 32).expand(3, -1, -1, -1)
    with torch.no_grad(): out = model(x, torch.tensor([0, 500, 999]))
    assert (out[0] - out[1]).abs().max() > 1e-4 and (out[1] - out[2]).abs().max() > 1e-4


def census(model, x, t):
    "Gradients of L = mean (f(x, t) - target)² (a target: the gradient of a square at an all-zero output is 0)."
    model.zero_grad(set_to_none=True)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    (model(x, t) - target).square().mean().backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize('config', [small('simple'), small(zero_init=False), small(zero_init=False, dropout=0.1),
                                    UNetConfig.preset('tiny', zero_init=False, in_channels=1)],
                         ids=['simple', 'modern', 'modern-dropout', 'tiny-1ch'])
def test_every_parameter_gets_a_nonzero_gradient_in_one_pass(config):
    model = build_unet(config).train()
    grads = census(model, torch.randn(4, config.in_channels, 32, 32), torch.tensor([0, 10, 500, 999]))
    for name, g in grads.items():
        assert g is not None, f'{name} got no gradient'
        assert g.isfinite().all() and g.abs().max() > 0, name


def test_zero_initialised_network_every_gradient_exists_and_all_are_nonzero_after_two_steps():
    "Zero layers pass no gradient backwards: pass 1 reaches only conv_out with non-zero values, pass 3 everything."
    model = build_unet(UNetConfig.preset('tiny'))
    x, t = torch.randn(4, 3, 32, 32), torch.tensor([0, 10, 500, 999])
    with torch.no_grad(): assert model(x, t).abs().max() == 0          # starts by predicting 0
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(3):
        grads = census(model, x, t)
        assert all(g is not None and g.isfinite().all() for g in grads.values())
        nonzero = {n for n, g in grads.items() if g.abs().max() > 0}
        if step == 0: assert nonzero == {'conv_out.weight', 'conv_out.bias'}
        opt.step()
    assert nonzero == set(grads)


@pytest.mark.parametrize('config', [UNetConfig.preset('tiny', zero_init=False, dropout=0.1), small('simple')],
                         ids=['modern', 'simple'])
def test_config_json_round_trip_rebuilds_an_identical_model(config):
    restored = UNetConfig.from_json(config.to_json())
    assert restored == config and restored.to_dict() == json.loads(config.to_json())
    torch.manual_seed(0); a = build_unet(config).eval()
    torch.manual_seed(0); b = build_unet(restored).eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)
    c = build_unet(json.loads(config.to_json())).eval()               # other weights, then copied over
    c.load_state_dict(sa)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 700])
    with torch.no_grad(): assert torch.equal(a(x, t), c(x, t))
    assert c.config == config


def test_attention_in_eval_mode_gives_the_same_for_a_batch_as_one_by_one():
    torch.manual_seed(0)
    attn = SelfAttention(32, head_channels=8, groups=4, zero_init=False).eval()
    x = torch.randn(6, 32, 16, 16)
    with torch.no_grad():
        together = attn(x)
        alone = torch.cat([attn(x[i:i + 1]) for i in range(len(x))])
    assert (together - alone).abs().max() < 1e-5
    assert (together - x).abs().max() > 1e-2                          # and the layer does something
    net = build_unet(UNetConfig(image_size=32, base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
                                attention_resolutions=(16, 8), head_channels=8, groups=4, zero_init=False,
                                dropout=0.2)).eval()                   # the whole network, attention at 16 and 8 px
    xs, ts = torch.randn(4, 3, 32, 32), torch.tensor([5, 50, 500, 900])
    with torch.no_grad():
        gap = (net(xs, ts) - torch.cat([net(xs[i:i + 1], ts[i:i + 1]) for i in range(4)])).abs().max()
    assert gap < 1e-5


def test_check_image_size_suggestions():
    check_image_size(64, 3)
    with pytest.raises(ValueError, match=r'use a multiple of 8, e\.g\. 48 or 56'):
        check_image_size(50, 3)
    with pytest.raises(ValueError, match=r'e\.g\. 8 or 16'):
        check_image_size(4, 3)
