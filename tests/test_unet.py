"""The U-Net of chapter 03: shapes, refusals, time dependence, gradients, JSON round trip, batch independence,
the parts against their formulas written out, and the condition input."""
import json
from dataclasses import replace
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from safetensors.torch import load_file
import face_diffusion
from face_diffusion.unet import (KINDS, PRESETS, UNetConfig, build_unet, count_parameters, flops_per_image,
                                 SelfAttention, ResBlock, SimpleUNet, UNet, check_image_size, Condition,
                                 example_condition)


def small(kind='modern', size=32, channels=3, **kw):
    "A narrow 3-level network: the presets' code paths at a fraction of the cost."
    return UNetConfig(kind=kind, image_size=size, in_channels=channels, base_channels=8, channel_mults=(1, 2, 2),
                      num_res_blocks=1, attention_resolutions=(size // 4,), head_channels=8, groups=4, **kw)



def example_inputs(config, n=4, seed=0):
    "x_t, t and a condition with every input `config` takes: random attributes (half the images dropped), image, levels."
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(n, config.in_channels, 32, 32, generator=g), torch.linspace(0, 999, n).long()
    A, C = config.cond_attributes, config.cond_image_channels
    cond = Condition(attributes=(torch.rand(n, A, generator=g) < 0.5).float() if A else None,
                     image=torch.rand(n, C, 32, 32, generator=g) * 2 - 1 if C else None,
                     level=torch.rand(n, generator=g) if config.cond_levels else None,
                     drop=torch.arange(n) % 2 == 0 if A else None)
    return x, t, cond

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
    assert n['tiny'] < 0.3e6 and 1e6 <= n['cpu32'] <= 3e6 and 0.5e6 <= n['sr64'] <= 1.2e6 and 30e6 <= n['faces64'] <= 40e6
    assert isinstance(build_unet('tiny'), UNet)
    assert isinstance(build_unet(small('simple')), SimpleUNet)
    with pytest.raises(ValueError, match='tiny, cpu32, sr64, faces64'):
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


def census(model, x, t, cond=None):
    "Gradients of L = mean (f(x, t, cond) - target)² (a target: the gradient of a square at an all-zero output is 0)."
    model.zero_grad(set_to_none=True)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    (model(x, t, cond) - target).square().mean().backward()
    return {n: p.grad for n, p in model.named_parameters()}


ALL_INPUTS = dict(cond_attributes=5, cond_image_channels=2, cond_levels=True)


@pytest.mark.parametrize('config', [small('simple'), small(zero_init=False), small(zero_init=False, dropout=0.1),
                                    UNetConfig.preset('tiny', zero_init=False, in_channels=1),
                                    small('simple', **ALL_INPUTS), small(zero_init=False, **ALL_INPUTS)],
                         ids=['simple', 'modern', 'modern-dropout', 'tiny-1ch', 'simple-cond', 'modern-cond'])
def test_every_parameter_gets_a_nonzero_gradient_in_one_pass(config):
    model = build_unet(config).train()
    cond = example_inputs(config, 4)[2] if config.conditions else None   # half the images dropped: n and W both used
    grads = census(model, torch.randn(4, config.in_channels, 32, 32), torch.tensor([0, 10, 500, 999]), cond)
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



def test_every_skip_connection_is_used():
    "Zeroing any one stored feature map, just before the decoder concatenates it, changes the output (chapter 03)."
    torch.manual_seed(0)
    model = build_unet(small(zero_init=False)).eval()
    x, t = torch.randn(3, 3, 32, 32), torch.tensor([10, 400, 900])
    up_blocks = [b for level in model.up for b in level.blocks]
    assert len(up_blocks) == len(model.skip_channels)                     # one skip per decoder block
    with torch.no_grad():
        y = model(x, t)
        for block, s in zip(up_blocks, reversed(model.skip_channels)):    # the decoder reads them in reverse order
            hook = block.register_forward_pre_hook(
                lambda m, args, s=s: (torch.cat([args[0][:, :-s], torch.zeros_like(args[0][:, -s:])], 1), *args[1:]))
            change = ((model(x, t) - y).norm() / y.norm()).item()
            hook.remove()
            assert change > 1e-3


def test_bundled_model_recovers_known_faces_from_known_noise():
    "x_t made from known faces and noise: the trained network's x̂_0 beats the guess 0 fourfold at t = 50, 200, 500."
    from face_diffusion.data import synthetic_faces, to_float
    from face_diffusion.forward import NoiseSchedule, q_sample, split_prediction
    run = json.loads((BUNDLED / 'config.json').read_text())
    model = build_unet(run['unet']).eval()
    model.load_state_dict(load_file(BUNDLED / 'ema.safetensors'))
    sched = NoiseSchedule(run['schedule']['kind'], run['schedule']['T'])
    faces = to_float(synthetic_faces(16, 32, seed=123)[0])
    eps = torch.randn(faces.shape, generator=torch.Generator().manual_seed(0))
    baseline = faces.square().mean().item()                               # MSE of x̂_0 = 0
    with torch.no_grad():
        for t in (50, 200, 500):
            tt = torch.full((16,), t)
            x_t = q_sample(sched, faces, tt, noise=eps)
            x0_hat, _ = split_prediction(sched, run['objective'], x_t, tt, model(x_t, tt))
            assert (x0_hat - faces).square().mean().item() < baseline / 4, t


def test_attention_cost_grows_as_the_square_of_the_positions():
    "The matrix products of attention cost 4 n² C FLOPs for n = H·W positions: 16 times more per doubling of the side."
    from torch.utils.flop_counter import FlopCounterMode
    for side in (8, 16, 32):
        with torch.device('meta'):
            layer = SelfAttention(64, head_channels=16, groups=8)
            with FlopCounterMode(display=False) as counter: layer(torch.zeros(2, 64, side, side))
        bmm = {str(op): f for op, f in counter.get_flop_counts()['Global'].items()}['aten.bmm']
        assert bmm == 2 * 4 * (side * side) ** 2 * 64                       # batch 2 · 4 n² C


# --- the parts against their formulas, written out by hand ---

def group_norm(h, norm):
    "GroupNorm written out: (h − μ_g) / √(σ²_g + ε) per image and group of channels, then γ_c · … + β_c."
    hg = h.reshape(h.shape[0], norm.num_groups, -1)
    mu, var = hg.mean(-1, keepdim=True), hg.var(-1, unbiased=False, keepdim=True)
    return ((hg - mu) / (var + norm.eps).sqrt()).reshape(h.shape) * norm.weight[:, None, None] + norm.bias[:, None, None]


@pytest.mark.parametrize('in_ch', [8, 16], ids=['conv-skip', 'identity-skip'])
def test_resblock_computes_scale_and_shift_of_the_group_norm(in_ch):
    torch.manual_seed(0)
    block = ResBlock(in_ch, 16, time_dim=12, groups=4, zero_init=False).eval()
    for p in [block.norm1.weight, block.norm1.bias, block.norm2.weight, block.norm2.bias]: nn.init.normal_(p)
    x, emb = torch.randn(2, in_ch, 8, 8), torch.randn(2, 12)
    with torch.no_grad():
        h = block.conv1(F.silu(group_norm(x, block.norm1)))                  # conv(SiLU(GN(x)))
        s, b = block.time_proj(emb)[:, :, None, None].chunk(2, dim=1)          # (s(t), b(t))
        h = group_norm(h, block.norm2) * (1 + s) + b                           # GN(h)·(1 + s) + b
        expected = block.skip(x) + block.conv2(F.silu(h))                      # skip(x) + F(x, t)
        assert (block(x, emb) - expected).abs().max() < 1e-5


def test_self_attention_is_softmax_of_qk_over_root_d_times_v_per_head():
    torch.manual_seed(0)
    attn = SelfAttention(32, head_channels=8, groups=4, zero_init=False).eval()     # 4 heads of d = 8
    x = torch.randn(2, 32, 4, 8)                                                      # not square: H and W kept apart
    c, d = 32, 8
    with torch.no_grad():
        tokens = attn.norm(x).flatten(2)                                              # (N, C, H·W)
        qkv = attn.qkv.weight[:, :, 0, 0] @ tokens + attn.qkv.bias[:, None]           # [q; k; v] = W x + b
        q, k, v = (qkv[:, i * c:(i + 1) * c].transpose(1, 2) for i in range(3))       # each (N, H·W, C)
        heads = []
        for j in range(c // d):                                                       # head j: channels jd … (j+1)d−1
            Q, K, V = (m[..., j * d:(j + 1) * d] for m in (q, k, v))
            weights = torch.softmax(Q @ K.transpose(1, 2) / d ** 0.5, dim=-1)          # softmax(Q Kᵀ / √d)
            assert torch.allclose(weights.sum(-1), torch.ones(2, 32))
            heads.append(weights @ V)                                                 # … V
        out = torch.cat(heads, dim=2).transpose(1, 2)                                 # (N, C, H·W)
        expected = x + (attn.proj.weight[:, :, 0, 0] @ out + attn.proj.bias[:, None]).reshape(x.shape)
        assert (attn(x) - expected).abs().max() < 1e-5


def test_simple_unet_blocks_get_relu_of_the_time_embedding_and_follow_the_formula():
    "Ho and Zhu's block: BN(ReLU(W_2 * h)), h = BN(ReLU(W_1 * x)) + ReLU(A u), with u = ReLU(e(t)) for every block."
    torch.manual_seed(0)
    net = build_unet(UNetConfig(kind='simple', image_size=32, base_channels=8, channel_mults=(1, 2, 4))).eval()
    x, t, seen = torch.randn(2, 3, 32, 32), torch.tensor([10, 900]), []
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append(args)) for b in [*net.downs, *net.ups]]
    with torch.no_grad():
        net(x, t)
        for h in hooks: h.remove()
        u = torch.relu(net.time_embed(t))                                      # u = ReLU(e(t))
        assert len(seen) == len(net.downs) + len(net.ups)
        assert all(torch.allclose(args[1], u, atol=1e-6) for args in seen)    # every block receives u
        for block, (xin, _) in zip([*net.downs, *net.ups], seen):
            h = block.bnorm1(torch.relu(block.conv1(xin)))                     # BN(ReLU(W_1 * x))
            h = h + torch.relu(block.time_mlp(u))[:, :, None, None]            # + ReLU(A u)
            expected = block.transform(block.bnorm2(torch.relu(block.conv2(h))))   # BN(ReLU(W_2 * h)), halve or double
            assert (block(xin, u) - expected).abs().max() < 1e-5


# --- the condition input: model(x_t, t, cond) ---

BUNDLED = Path(face_diffusion.__file__).parent / 'pretrained'
# The bundled model's output for example_inputs' x_t (seed 0, 4×3×32×32) and t = 0, 250, 600, 999, measured
# before the condition input existed: the sum over each image, and the sum of |output| over the batch.
BUNDLED_SUMS, BUNDLED_ABS_SUM = [52.18736, 74.24012, 22.20247, 238.15312], 8437.7433


def test_old_configs_and_the_bundled_model_are_unchanged():
    old = json.loads((BUNDLED / 'config.json').read_text())['unet']
    assert not {'cond_attributes', 'cond_image_channels', 'cond_levels'} & set(old)   # written before the fields
    config = UNetConfig.from_dict(old)
    assert config.conditions == () and config == UNetConfig.preset('cpu32')
    model = build_unet(config).eval()
    weights = load_file(BUNDLED / 'ema.safetensors')
    assert sorted(model.state_dict()) == sorted(weights)                  # no new names, none missing
    model.load_state_dict(weights)                                        # strict: names and shapes
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 250, 600, 999])
    with torch.no_grad(): out = model(x, t).double()
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.tensor(BUNDLED_SUMS, dtype=torch.float64), rtol=1e-4, atol=1e-3)
    assert abs(out.abs().sum().item() - BUNDLED_ABS_SUM) < 1e-4 * BUNDLED_ABS_SUM
    with torch.no_grad():                                                 # an empty condition is no condition
        assert torch.equal(model(x, t, None), model(x, t, Condition())) and torch.equal(model(x, t, {}), model(x, t))


def test_condition_fields_round_trip_and_bad_values_are_refused():
    config = small(**ALL_INPUTS)
    assert UNetConfig.from_json(config.to_json()) == config and config.conditions == ('attributes', 'image', 'level')
    assert small(cond_levels=True).conditions == ('level',) and small().conditions == ()
    for bad in [dict(cond_attributes=-1), dict(cond_attributes=2.5), dict(cond_image_channels=True),
                dict(cond_levels=1), dict(cond_levels='yes')]:
        with pytest.raises(ValueError) as err: UNetConfig.preset('tiny', **bad)
        assert '\n' not in str(err.value) and next(iter(bad)) in str(err.value)


@pytest.mark.parametrize('kind', KINDS)
def test_conditioned_model_shapes_parameters_and_dict_input(kind):
    config = small(kind, zero_init=False, **ALL_INPUTS)
    torch.manual_seed(0); model = build_unet(config).eval()
    torch.manual_seed(0); plain = build_unet(small(kind, zero_init=False))
    new = sorted(set(model.state_dict()) - set(plain.state_dict()))
    assert all(k.startswith('cond_embed.') for k in new) and 'cond_embed.attributes.null' in new
    assert 'cond_embed.attributes.proj.weight' in new and 'cond_embed.level.mlp.0.weight' in new
    first = 'conv_in' if kind == 'modern' else 'conv0'
    assert getattr(model, first).weight.shape[1] == 3 + 2                 # reads x_t ⊕ c
    x, t, cond = example_inputs(config)
    with torch.no_grad():
        out = model(x, t, cond)
        assert out.shape == x.shape
        assert torch.equal(model(x, t, vars(cond)), out)                 # a dict with the same keys
        assert model(x, t, Condition(image=cond.image, level=0.5)).shape == x.shape   # no attributes: null; one level
        assert model(torch.randn(2, 3, 16, 16), 7, example_condition(config, 2, 16)).shape == (2, 3, 16, 16)
    assert flops_per_image(model) > flops_per_image(plain)


def refusals():
    "(which model, cond, what the one-line message must say)."
    x, _, cond = example_inputs(small(**ALL_INPUTS))
    a, img = cond.attributes, cond.image
    ok = dict(image=img, level=0.2)
    return [('plain', dict(attributes=a), 'no attributes input; build it with cond_attributes=5'),
            ('plain', dict(image=img), 'no image input; build it with cond_image_channels=2'),
            ('plain', dict(level=0.5), 'no level input; build it with cond_levels=True'),
            ('plain', dict(drop=True), 'no attributes input'),
            ('cond', None, r'needs cond.image, an image of shape \(4, 2, 32, 32\)'),
            ('cond', dict(image=img), 'needs cond.level'),
            ('cond', dict(image=img[:, :, :16, :16], level=0.2), r'cond.image must have shape \(4, 2, 32, 32\)'),
            ('cond', dict(image=x, level=0.2), r'cond.image must have shape \(4, 2, 32, 32\)'),
            ('cond', dict(attributes=a[:, :4], **ok), r'has 4 attributes per image, but this U-Net takes 5'),
            ('cond', dict(attributes=a[0], **ok), r'cond.attributes must have shape \(N, A\) = \(4, 5\)'),
            ('cond', dict(attributes=a[:3], **ok), r'cond.attributes must have shape \(N, A\) = \(4, 5\)'),
            ('cond', dict(attributes=a, drop=torch.rand(4), **ok), 'cond.drop must be booleans'),
            ('cond', dict(attributes=a, drop=[True, False], **ok), r'cond.drop must be a number or have shape \(4,\)'),
            ('cond', dict(attributes=a, drop=torch.ones(4, 3, dtype=torch.bool), **ok), r'cond.drop must have shape \(4,\)'),
            ('cond', dict(image=img, level=torch.rand(4, 1)), r'cond.level must be a number or have shape \(4,\)'),
            ('cond', dict(attribute=a, **ok), r"unknown condition keys \['attribute'\]"),
            ('cond', [a, img], 'cond must be a Condition, a dict')]


@pytest.mark.parametrize('kind', KINDS)
def test_bad_conditions_are_refused_in_one_line(kind):
    models = {'plain': build_unet(small(kind)), 'cond': build_unet(small(kind, **ALL_INPUTS))}
    x, t, _ = example_inputs(small(**ALL_INPUTS))
    for which, cond, message in refusals():
        with pytest.raises(ValueError, match=message) as err: models[which](x, t, cond)
        assert '\n' not in str(err.value)


@pytest.mark.parametrize('kind', KINDS)
def test_drop_gives_exactly_the_null_condition_and_the_null_differs_from_a_real_one(kind):
    config = small(kind, zero_init=False, **ALL_INPUTS)
    torch.manual_seed(0); model = build_unet(config).eval()
    x, t, cond = example_inputs(config)
    flags = cond.drop
    with torch.no_grad():
        kept = model(x, t, replace(cond, drop=None))
        null = model(x, t, replace(cond, attributes=None, drop=None))      # no attributes: n for every image
        assert torch.equal(model(x, t, replace(cond, drop=True)), null)
        assert torch.equal(model(x, t, cond.unconditional()), null)
        mixed = model(x, t, cond)                                          # drop per image, in one batch
        assert torch.equal(mixed[flags], null[flags]) and torch.equal(mixed[~flags], kept[~flags])
    assert (null - kept).abs().max() > 1e-3


@pytest.mark.parametrize('kind', KINDS)
def test_image_and_level_conditions_change_the_output(kind):
    config = small(kind, zero_init=False, **ALL_INPUTS)
    torch.manual_seed(0); model = build_unet(config).eval()
    x, t, cond = example_inputs(config)
    with torch.no_grad():
        out = model(x, t, cond)
        other_image = model(x, t, replace(cond, image=-cond.image))
        other_level = model(x, t, replace(cond, level=1 - cond.level))
        quarters = model(x, t, replace(cond, level=torch.tensor([0.0, 0.25, 0.5, 0.75])))
        as_timesteps = model(x, t, replace(cond, level=torch.tensor([0, 250, 500, 750])))  # whole numbers: timesteps
    for other in (other_image, other_level):
        assert ((other - out).abs().amax(dim=(1, 2, 3)) > 1e-4).all()    # every image's answer changes
    assert torch.equal(quarters, as_timesteps)                             # ℓ ∈ [0, 1] is embedded as 1000·ℓ


def test_null_embedding_and_every_condition_weight_are_learned():
    config = small(zero_init=False, **ALL_INPUTS)
    model = build_unet(config).train()
    x, t, cond = example_inputs(config)
    grads = census(model, x, t, cond)
    for name in ('cond_embed.attributes.null', 'cond_embed.attributes.proj.weight', 'cond_embed.level.mlp.0.weight'):
        assert grads[name] is not None and grads[name].abs().max() > 0, name
    assert model.conv_in.weight.grad[:, 3:].abs().max() > 0                # the kernels W_c that read the image
    null_grad = census(model, x, t, replace(cond, drop=None))['cond_embed.attributes.null']   # nothing dropped
    assert null_grad is None or null_grad.abs().max() == 0                  # n is not used


def test_zero_initialised_condition_changes_nothing_until_trained():
    "Zero-init: W, n, the level MLP's last layer and W_c start at 0, so every condition gives the same answer."
    config = small(**ALL_INPUTS)
    torch.manual_seed(0); model = build_unet(config).eval()
    cond_names = [n for n, _ in model.named_parameters() if n.startswith('cond_embed')]
    with torch.no_grad():
        for name, p in model.named_parameters():                            # switch the rest of the network on
            if not name.startswith('cond_embed') and name != 'conv_in.weight': p.normal_(0, 0.05)
        x, t, cond = example_inputs(config)
        out = model(x, t, cond)
        assert out.abs().max() > 0
        for other in [replace(cond, drop=None), cond.unconditional(), replace(cond, image=-cond.image),
                      replace(cond, level=1 - cond.level)]:
            assert torch.equal(model(x, t, other), out)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)                        # moves each weight with a gradient ≈ lr
    model.train()
    for step in range(4):
        grads = census(model, x, t, cond)
        opt.step()
    assert all(grads[n].abs().max() > 0 for n in cond_names)                  # by the fourth pass, all of them
    assert model.conv_in.weight.grad[:, 3:].abs().max() > 0
    with torch.no_grad():
        assert (model(x, t, cond.unconditional()) - model(x, t, replace(cond, drop=None))).abs().max() > 1e-4
