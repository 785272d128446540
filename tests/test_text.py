"""Tests of face_diffusion.text (chapter 10a): captions written from the synthetic faces' attributes, tokens, the text
encoder, cross-attention, the U-Net that reads captions (its condition checks, its null caption, guidance), starting
from a trained model, captions as the Trainer's condition, prompts, and training with exact resume."""
import json, random, re, shutil, warnings

import pytest
import torch

from face_diffusion.conditioning import GuidedModel, codes_fingerprint, synthetic_codes
from face_diffusion.data import synthetic_faces
from face_diffusion.faces import ATTRIBUTES
from face_diffusion.runs import DataSource, checkpoints, load_run, pretrained_dir, read_config
from face_diffusion.text import (BACKGROUND, BACKGROUND_NOUN, BOS, GROUPS, HAIR_COLOR, HELDOUT_PHRASINGS, MOUTH_WORDS,
                                 P_UNCOND_TEXT, PAD, SPECIAL, SUBJECTS, TEXT_LEN, TRAIN_PHRASINGS, UNK, VOCABULARY,
                                 WITH, WORD_ID, CrossAttention, TextCondition, TextEncoder, prompt_condition,
                                 resume_text, start_from, text_condition, text_unet, tokenize, words_of, write_caption)
from face_diffusion.training import TrainConfig, Trainer
from face_diffusion.unet import Condition, UNetConfig, build_unet
from one_line import refused

V = len(VOCABULARY)
COLOURS = ATTRIBUTES['hair_color']
MOUTHS = [w for ws in MOUTH_WORDS.values() for w in ws]


def gen(seed=0): return torch.Generator().manual_seed(seed)


def random_codes(n, seed=0) -> list:
    "n faces' codes, every value of every group equally likely (the synthetic faces make some rare)."
    rng = random.Random(seed)
    return [[rng.randrange(len(ATTRIBUTES[g])) for g in GROUPS] for _ in range(n)]


# --- captions ---

def has(phrase: str, text: str) -> bool:
    "Whether `phrase` occurs in `text` as whole words."
    return f" {' '.join(words_of(phrase))} " in f" {' '.join(words_of(text))} "


def said(text: str) -> dict:
    "Group → the values a caption names for it, read back from the phrase tables."
    out = {g: set() for g in GROUPS}
    for g, table in WITH.items():
        out[g] |= {v for v, phrases in table.items() if any(has(p, text) for p in phrases)}
    out['mouth'] |= {v for v, words in MOUTH_WORDS.items() if any(has(w, text) for w in words)}
    if has('without glasses', text): out['glasses'].add('none')
    out['background'] = {v for v in BACKGROUND if any(has(p, text) for p in BACKGROUND[v] + BACKGROUND_NOUN[v])}
    out['hair_color'] = {c for c in COLOURS if has(f'{HAIR_COLOR[c]} hair', text)}
    out['hair_style'] = {s for s in ('short', 'long', 'curly')
                         if has(f'{s} hair', text) or any(has(f'{s} {c} hair', text) for c in COLOURS)}
    if has('hair in a bun', text): out['hair_style'].add('bun')
    if has('a bald head', text) or has('no hair', text): out['hair_style'].add('bald')
    return out


def values_of(codes) -> dict: return {g: ATTRIBUTES[g][int(c)] for g, c in zip(GROUPS, codes)}


def test_a_caption_names_what_is_true_of_the_face_and_nothing_else():
    rng, seen = random.Random(1), set()
    for codes in random_codes(600):
        face = values_of(codes)
        for phrasing in (None,) + TRAIN_PHRASINGS + HELDOUT_PHRASINGS:
            text, named = write_caption(codes, rng, phrasing)
            assert named and named == [g for g in GROUPS if g in named], (named, text)   # some, in GROUPS order
            told = said(text)
            for g in GROUPS:
                assert told[g] == ({face[g]} if g in named else set()), (g, face[g], named, text)
                seen |= {(g, v) for v in told[g]}
            if face['hair_style'] == 'bald' and 'hair_style' in named:
                assert 'hair_color' not in named and not told['hair_color'], text   # never "a bald head and red hair"
    assert seen == {(g, v) for g in GROUPS for v in ATTRIBUTES[g]}                 # every value was named somewhere


def test_named_groups_are_the_ones_asked_for():
    rng = random.Random(2)
    for codes in random_codes(200, seed=2):
        ask = rng.sample(GROUPS, rng.randint(1, len(GROUPS)))
        for phrasing in TRAIN_PHRASINGS + HELDOUT_PHRASINGS:
            text, named = write_caption(codes, rng, phrasing, named=ask)
            assert [g for g in named if g != 'hair_color'] == [g for g in GROUPS if g in ask and g != 'hair_color']
            if values_of(codes)['hair_style'] != 'bald': assert ('hair_color' in named) == ('hair_color' in ask)
            elif 'hair_style' in ask: assert 'hair_color' not in named, (ask, named)   # never with "a bald head"
            assert {g for g, v in said(text).items() if v} == set(named), (named, text)


def test_a_bald_faces_hair_colour_is_never_named():
    "A bald face shows no hair colour (faces.py draws no hair, and brown eyebrows), so no caption may name one."
    rng = random.Random(3)
    for codes in random_codes(300, seed=3):
        codes[GROUPS.index('hair_style')] = ATTRIBUTES['hair_style'].index('bald')
        text, named = write_caption(codes, rng, named=['hair_color', 'eyebrows'])
        assert 'hair_color' not in named and not said(text)['hair_color'], text


@pytest.mark.parametrize('p', [0.0, 0.2, 0.8, 1.0])
def test_p_mention_is_how_often_each_group_is_named(p):
    rng, n = random.Random(4), 3000
    draws = [write_caption(codes, rng, p_mention=p)[1] for codes in random_codes(n, seed=4)]
    if p == 0: assert all(len(named) == 1 for named in draws)                  # at least one group, always
    haired = [named for named, codes in zip(draws, random_codes(n, seed=4)) if values_of(codes)['hair_style'] != 'bald']
    expected = p + (1 - p) ** len(GROUPS) / len(GROUPS)                        # + the one drawn when none was
    for g in GROUPS:
        among = haired if g == 'hair_color' else draws                          # a bald head may leave its colour out
        rate = sum(g in named for named in among) / len(among)
        assert rate == pytest.approx(expected, abs=0.04), (g, rate, expected)


BACKGROUND_FIRST = tuple(p for ps in BACKGROUND.values() for p in ps)
SUBJECT_FIRST = re.compile(rf"^({'|'.join(SUBJECTS)}|a ({'|'.join(MOUTHS)}) (person|face|man|woman))\b")
MOUTH_AFTER = re.compile(rf"\b({'|'.join(SUBJECTS)}) ({'|'.join(MOUTHS)})\b")


def test_a_training_draw_never_takes_a_held_out_shape():
    rng = random.Random(5)
    shapes = {p: 0 for p in HELDOUT_PHRASINGS}
    for codes in random_codes(1000, seed=5):
        text, _ = write_caption(codes, rng)                                     # phrasing=None: training's
        assert not text.startswith(BACKGROUND_FIRST), text                      # not background_first
        assert SUBJECT_FIRST.match(text), text                                  # not list_only
        assert not MOUTH_AFTER.search(text), text                               # not adjective_after
        # the same groups in each held-out phrasing do take its shape (so the checks above can see one)
        everything = list(GROUPS)
        shapes['background_first'] += write_caption(codes, rng, 'background_first', everything)[0].startswith(BACKGROUND_FIRST)
        shapes['list_only'] += not SUBJECT_FIRST.match(write_caption(codes, rng, 'list_only', everything)[0])
        shapes['adjective_after'] += bool(MOUTH_AFTER.search(write_caption(codes, rng, 'adjective_after', everything)[0]))
    assert shapes == {p: 1000 for p in HELDOUT_PHRASINGS}


def test_every_word_of_every_phrasing_is_in_the_vocabulary():
    assert VOCABULARY[:3] == SPECIAL and len(set(VOCABULARY)) == V and WORD_ID == {w: i for i, w in enumerate(VOCABULARY)}
    assert (PAD, BOS, UNK) == (0, 1, 2)
    rng = random.Random(6)
    words = set()
    for codes in random_codes(500, seed=6):
        for phrasing in (None,) + TRAIN_PHRASINGS + HELDOUT_PHRASINGS:
            for p_mention in (0.0, 0.5, 1.0):
                words |= set(words_of(write_caption(codes, rng, phrasing, p_mention=p_mention)[0]))
    assert words <= set(VOCABULARY), words - set(VOCABULARY)
    assert words == set(VOCABULARY[3:])                                         # and every word is used
    assert UNK not in tokenize(' '.join(words))[0]


def test_an_unknown_phrasing_is_refused_in_one_line():
    codes = random_codes(1)[0]
    msg = refused(lambda: write_caption(codes, random.Random(0), 'passive'), "'passive'")
    for name in TRAIN_PHRASINGS + HELDOUT_PHRASINGS: assert name in msg


def test_a_caption_depends_only_on_its_generator():
    codes = random_codes(50, seed=7)
    random.seed(1)
    first = [write_caption(c, random.Random(i)) for i, c in enumerate(codes)]
    random.seed(2)                                                              # the global generator plays no part
    assert [write_caption(c, random.Random(i)) for i, c in enumerate(codes)] == first
    assert [write_caption(c, random.Random(i + 100)) for i, c in enumerate(codes)] != first
    assert write_caption(torch.tensor(codes[0]), random.Random(0)) == first[0]  # codes as a tensor row, too


# --- tokens ---

def test_tokenize_bos_words_pad():
    tokens, unknown = tokenize(['a smiling person with long red hair', 'someone', ''], length=10)
    ids = lambda text: [WORD_ID[w] for w in text.split()]
    assert tokens.shape == (3, 10) and tokens.dtype == torch.long and unknown == []
    assert tokens[0].tolist() == [BOS] + ids('a smiling person with long red hair') + [PAD] * 2
    assert tokens[1].tolist() == [BOS, WORD_ID['someone']] + [PAD] * 8
    assert tokens[2].tolist() == [BOS] + [PAD] * 9                               # the empty caption: <bos> alone
    assert tokenize('Someone, with RED hair!')[0].tolist() == [[BOS] + ids('someone with red hair') + [PAD] * (TEXT_LEN - 5)]
    assert tokenize('a face')[0].shape == (1, TEXT_LEN)                         # one caption: one row


def test_tokenize_marks_unknown_words_and_lists_them_once_in_order():
    tokens, unknown = tokenize(['a cat with red fur', 'a dog and a cat', 'a fox'], length=8)
    assert unknown == ['cat', 'fur', 'dog', 'fox']
    assert tokens[0].tolist() == [BOS, WORD_ID['a'], UNK, WORD_ID['with'], WORD_ID['red'], UNK, PAD, PAD]
    assert tokens[1].tolist() == [BOS, WORD_ID['a'], UNK, WORD_ID['and'], WORD_ID['a'], UNK, PAD, PAD]


def test_an_unknown_word_repeated_in_one_caption_is_listed_once():
    assert tokenize('a cat and a cat')[1] == ['cat']
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        prompt_condition('a happy happy person', 1)
    assert str(caught[0].message).count('happy') == 1


def test_tokenize_cuts_long_captions():
    text = ' '.join(['red'] * 50)
    tokens, _ = tokenize([text, 'a face'])
    assert tokens.shape == (2, TEXT_LEN) and tokens[0].tolist() == [BOS] + [WORD_ID['red']] * (TEXT_LEN - 1)
    assert tokenize(text, length=5)[0].tolist() == [[BOS] + [WORD_ID['red']] * 4]
    assert tokenize('a b c', length=1)[0].tolist() == [[BOS]]


# --- the text encoder and cross-attention ---

def encoder(seed=0, layers=2):
    torch.manual_seed(seed)
    return TextEncoder(V, dim=32, layers=layers, heads=4).eval()


CAPTIONS = ['a smiling person with long red hair', 'someone with round glasses', 'a face']


def test_padding_does_not_change_the_real_tokens():
    enc = encoder()
    tokens, _ = tokenize(CAPTIONS, length=TEXT_LEN)
    short = tokens[:, :9]                                                       # the longest caption is 8 words
    with torch.no_grad():
        e, real = enc(tokens, None, 3)
        e9, real9 = enc(short, None, 3)
    assert e.shape == (3, TEXT_LEN, 32) and real.shape == (3, TEXT_LEN) and real.dtype == torch.bool
    assert torch.equal(real, tokens != PAD) and torch.equal(real9, real[:, :9])
    assert torch.allclose(e[:, :9][real9], e9[real9], atol=1e-5)


def test_drop_gives_exactly_the_empty_caption():
    enc = encoder()
    tokens, _ = tokenize(CAPTIONS)
    empty = tokenize([''] * 3)[0]
    drop = torch.tensor([True, False, True])
    with torch.no_grad():
        e, real = enc(tokens, drop, 3)
        expected, expected_real = enc(torch.where(drop[:, None], empty, tokens), None, 3)
        none, none_real = enc(None, None, 3)                                    # no caption at all: the empty one
        plain, _ = enc(tokens, None, 3)
    assert torch.equal(e, expected) and torch.equal(real, expected_real)
    assert real[:, 0].all() and real.sum(1).tolist() == [1, 5, 1]
    assert torch.equal(e[1], plain[1]) and not torch.allclose(e[0, 0], plain[0, 0], atol=1e-3)
    assert none.shape == (3, 1, 32) and none_real.tolist() == [[True]] * 3
    assert torch.allclose(none[:, 0], expected[0, 0].expand(3, -1), atol=1e-5)


def test_zero_initialised_cross_attention_is_the_identity():
    x = torch.randn(2, 16, 8, 8, generator=gen())
    keys, real = torch.randn(2, 5, 32, generator=gen(1)), torch.ones(2, 5, dtype=torch.bool)
    torch.manual_seed(0)
    assert torch.equal(CrossAttention(16, 32, head_channels=8, groups=4)(x, keys, real), x)
    torch.manual_seed(0)
    assert not torch.allclose(CrossAttention(16, 32, head_channels=8, groups=4, zero_init=False)(x, keys, real), x, atol=1e-4)


def test_cross_attention_never_reads_padded_tokens():
    torch.manual_seed(0)
    attend = CrossAttention(16, 32, head_channels=8, groups=4, zero_init=False)
    x, keys = torch.randn(2, 16, 8, 8, generator=gen()), torch.randn(2, 6, 32, generator=gen(1))
    real = torch.tensor([[True, True, True, False, False, False], [True, True, True, True, True, False]])
    junk = torch.where(real[..., None], keys, 100 * torch.randn(2, 6, 32, generator=gen(2)))   # other padded keys
    with torch.no_grad():
        out = attend(x, keys, real)
        assert torch.allclose(attend(x, junk, real), out, atol=1e-6)
        assert torch.allclose(attend(x[:1], keys[:1, :3], real[:1, :3]), out[:1], atol=1e-5)   # as if cut at 3 tokens
        moved = keys.clone(); moved[:, 1] += 1                                  # a real token: it is read
        assert (attend(x, moved, real) - out).abs().amax((1, 2, 3)).min() > 1e-4


# --- the U-Net that reads captions ---

@pytest.fixture(scope='module')
def model():
    "A tiny text U-Net whose every layer (W_o included) is non-zero, as after training."
    torch.manual_seed(0)
    return build_unet(text_unet('tiny', 32, zero_init=False)).eval()


X, T = torch.randn(3, 3, 32, 32, generator=gen(9)), torch.tensor([10, 400, 900])
TOKENS = tokenize(CAPTIONS)[0]


def test_text_unet_configuration_and_output(model):
    config = text_unet('tiny', 32)
    assert config.cond_text_vocab == V and config.cond_text_len == TEXT_LEN and config.conditions == ('tokens',)
    other = lambda c: {k: v for k, v in c.to_dict().items() if not k.startswith('cond_text')}
    assert other(config) == other(UNetConfig.preset('tiny'))
    assert UNetConfig.from_json(config.to_json()) == config
    assert text_unet(UNetConfig.preset('tiny', image_size=16), cond_text_dim=32).cond_text_dim == 32
    n_cross = sum(isinstance(m, CrossAttention) for m in model.modules())
    assert n_cross == 4                                                         # 8×8 down, 8×8 up twice, middle
    with torch.no_grad():
        out = model(X, T, Condition(tokens=TOKENS))
        assert out.shape == X.shape and torch.isfinite(out).all()
        assert torch.allclose(model(X, T, {'tokens': TOKENS[:, :9]}), out, atol=1e-5)   # padding changes nothing
        other = model(X, T, Condition(tokens=tokenize(['a frowning man with dark skin', 'a bald head', 'red hair'])[0]))
    assert (other - out).abs().amax((1, 2, 3)).min() > 1e-4                     # other words, another output


def test_a_dropped_caption_is_not_read(model):
    other = tokenize(['a frowning man with dark skin', 'a bald head', 'red hair'])[0]
    drop = torch.tensor([True, True, False])
    with torch.no_grad():
        a, b = model(X, T, Condition(tokens=TOKENS, drop=drop)), model(X, T, Condition(tokens=other, drop=drop))
    assert torch.equal(a[:2], b[:2]) and (a[2] - b[2]).abs().max() > 1e-4


def test_the_null_caption_is_the_empty_caption(model):
    with torch.no_grad():
        null = model(X, T, Condition(tokens=TOKENS).unconditional())
        assert torch.equal(model(X, T, Condition(tokens=tokenize([''] * 3)[0])), null)
        assert torch.allclose(model(X, T, Condition()), null, atol=1e-5)       # no tokens: the empty caption
        assert torch.allclose(model(X, T, None), null, atol=1e-5)
        assert torch.allclose(model(X, T, Condition(drop=True)), null, atol=1e-5)
        assert (model(X, T, Condition(tokens=TOKENS)) - null).abs().amax((1, 2, 3)).min() > 1e-4


def test_bad_tokens_are_refused_in_one_line(model):
    plain = build_unet(UNetConfig.preset('tiny')).eval()
    refused(lambda: plain(X, T, Condition(tokens=TOKENS)), 'cond.tokens', 'no text input', 'cond_text_vocab')
    refused(lambda: model(X, T, Condition(tokens=TOKENS.float())), 'word ids from 0 to', str(V - 1))
    refused(lambda: model(X, T, Condition(tokens=TOKENS.bool())), 'word ids from 0 to')
    too_big = TOKENS.clone(); too_big[1, 3] = V
    refused(lambda: model(X, T, Condition(tokens=too_big)), f'0 to {V - 1}', f'size is {V}')
    refused(lambda: model(X, T, Condition(tokens=-TOKENS)), f'0 to {V - 1}')
    long = torch.cat([TOKENS, torch.zeros(3, 1, dtype=torch.long)], 1)
    refused(lambda: model(X, T, Condition(tokens=long)), f'1 ≤ L ≤ {TEXT_LEN}', f'(3, {TEXT_LEN + 1})')
    refused(lambda: model(X, T, Condition(tokens=TOKENS[:2])), 'cond.tokens', '(2, 32)')
    refused(lambda: model(X, T, Condition(tokens=TOKENS[0])), 'cond.tokens', '(N, L)')
    refused(lambda: model(X, T, Condition(tokens=TOKENS[:, :0])), f'1 ≤ L ≤ {TEXT_LEN}')
    for drop in (torch.zeros(3, 9, dtype=torch.bool), torch.zeros(3, 1, dtype=torch.bool)):
        refused(lambda: model(X, T, Condition(tokens=TOKENS, drop=drop)), 'cond.drop', 'one flag per image', '(3,)')
    refused(lambda: model(X, T, Condition(tokens=TOKENS, drop=torch.zeros(3))), 'cond.drop', 'booleans')
    refused(lambda: model(X, T, Condition(tokens=TOKENS, attributes=torch.zeros(3, 4))), 'cond.attributes',
            'cond_attributes')


def test_a_caption_without_a_real_token_is_refused_or_harmless(model):
    tokens = TOKENS.clone(); tokens[1] = PAD
    try:
        with torch.no_grad(): out = model(X, T, Condition(tokens=tokens))
    except ValueError: refused(lambda: model(X, T, Condition(tokens=tokens)), 'cond.tokens')
    else: assert torch.isfinite(out).all()


def test_guidance_with_captions(model):
    cond = Condition(tokens=TOKENS)
    with torch.no_grad():
        c, u = model(X, T, cond), model(X, T, cond.unconditional())
        assert torch.equal(GuidedModel(model, 1.0)(X, T, cond), c)             # w = 1: the conditional pass alone
        assert torch.allclose(GuidedModel(model, 0.0)(X, T, cond), u, atol=1e-5)
        assert torch.allclose(GuidedModel(model, 3.0)(X, T, cond), u + 3 * (c - u), atol=1e-5)   # one pass of 2N = two of N
        some = Condition(tokens=TOKENS, drop=torch.tensor([False, True, False]))
        mixed = GuidedModel(model, 3.0)(X, T, some)
        assert torch.allclose(mixed[[0, 2]], (u + 3 * (c - u))[[0, 2]], atol=1e-5)
        assert torch.allclose(mixed[1], u[1], atol=1e-5)                        # a dropped caption is not guided
        assert torch.equal(GuidedModel(model, 3.0)(X, T, cond.unconditional()), u)   # nothing asked: one pass
        assert GuidedModel(model, 3.0).config is model.config


# --- starting from a trained model ---

def test_a_text_unet_started_from_the_unconditional_model_is_that_model():
    config = text_unet('cpu32', 32)
    plain = load_run(pretrained_dir('unconditional')).model.eval()
    torch.manual_seed(0)
    weights = start_from(config, pretrained_dir('unconditional'))
    text = build_unet(config).eval()
    text.load_state_dict(weights)
    new = {k for k in weights if k not in plain.state_dict()}
    assert new and all(k.startswith('text.') or '.cross.' in k for k in new)
    assert all(torch.equal(weights[k], v) for k, v in plain.state_dict().items())
    x, t = torch.randn(2, 3, 32, 32, generator=gen(3)), torch.tensor([20, 700])
    with torch.no_grad():
        expected = plain(x, t)
        for captions in (['a bald man with sunglasses', 'someone with long red hair'], ['', 'a face']):
            assert torch.equal(text(x, t, Condition(tokens=tokenize(captions)[0])), expected)
        assert torch.equal(text(x, t, Condition(tokens=tokenize(['x'] * 2)[0]).unconditional()), expected)


def test_start_from_refuses_another_network():
    refused(lambda: start_from(text_unet('tiny', 32), pretrained_dir('unconditional')), 'another network', 'tensors fit')


# --- captions as the Trainer's condition ---

@pytest.fixture(scope='module')
def faces64():
    return synthetic_faces(64, 32)


@pytest.fixture(scope='module')
def codes64(faces64):
    return synthetic_codes(faces64[1])


def test_batch_depends_only_on_the_generator(codes64):
    cond = TextCondition(codes64)
    index = torch.arange(40) % 64
    torch.manual_seed(1); random.seed(1)
    first = cond.batch(index, None, gen(5))
    torch.manual_seed(2); random.seed(2)
    again = cond.batch(index, None, gen(5))
    other = cond.batch(index, None, gen(6))
    assert first.tokens.shape == (40, TEXT_LEN) and first.drop.shape == (40,) and first.drop.dtype == torch.bool
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.drop, again.drop)
    assert not torch.equal(first.tokens, other.tokens)
    g = gen(5)
    cond.batch(index, None, g)
    assert not torch.equal(g.get_state(), gen(5).get_state())                   # its draws came from the generator


def test_batch_captions_describe_their_own_faces(codes64):
    cond = TextCondition(codes64, p_uncond=0.0)
    index = torch.randperm(64, generator=gen(1))[:48]
    c = cond.batch(index, None, gen(2))
    assert not c.drop.any() and (c.tokens != UNK).all()
    captions = [' '.join(VOCABULARY[i] for i in row if i > BOS) for row in c.tokens.tolist()]
    assert len(set(captions)) > 40                                              # fresh captions, not one per face
    for i, text in zip(index.tolist(), captions):
        face, told = values_of(codes64[i]), said(text)
        assert any(told.values()) and all(v <= {face[g]} for g, v in told.items()), (face, text)


@pytest.mark.parametrize('p', [0.0, 0.1, 0.3])
def test_p_uncond_is_the_rate_of_empty_captions(codes64, p):
    c = TextCondition(codes64, p_uncond=p).batch(torch.arange(3000) % 64, None, gen(0))
    assert c.drop.float().mean().item() == pytest.approx(p, abs=0.025)
    if p == 0: assert not c.drop.any()


def test_check_refuses_a_unet_or_images_that_do_not_fit(codes64):
    cond = TextCondition(codes64)
    images = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    cond.check(text_unet('tiny', 32), images)
    refused(lambda: cond.check(text_unet('tiny', 32), images[:60]), '64 label rows for 60 images')
    for unet in (UNetConfig.preset('tiny'), text_unet('tiny', 32, cond_text_vocab=V + 1), text_unet('tiny', 32, cond_text_len=16)):
        refused(lambda: cond.check(unet, images), f'reads {unet.cond_text_vocab} words', f'{unet.cond_text_len} tokens',
                'text_unet')
    for bad in (1, 1.5, -0.1, True, '0.1', None, float('nan')):
        refused(lambda: TextCondition(codes64, p_uncond=bad), 'p_uncond', '[0, 1)')
    refused(lambda: TextCondition(codes64[:, :8]), '9 attribute codes', '(64, 8)')
    refused(lambda: TextCondition(codes64[0]), '9 attribute codes', '(9,)')


def test_to_dict_and_preview(codes64):
    cond = TextCondition(codes64, {'kind': 'synthetic'}, p_uncond=0.25)
    assert cond.to_dict() == {'kind': 'text', 'vocabulary': VOCABULARY, 'length': TEXT_LEN, 'labels': {'kind': 'synthetic'},
                              'count': 64, 'sha256': codes_fingerprint(codes64), 'p_uncond': 0.25}
    assert json.loads(json.dumps(cond.to_dict())) == cond.to_dict()
    assert TextCondition(codes64).to_dict()['labels'] == {'kind': 'tensor'}
    assert TextCondition(codes64).to_dict()['p_uncond'] == P_UNCOND_TEXT
    preview = cond.preview(70)
    assert preview.tokens.shape == (70, TEXT_LEN) and preview.drop is None
    assert torch.equal(cond.preview(70).tokens, preview.tokens)                 # the same every time


def test_text_condition_reads_the_synthetic_faces_and_refuses_photos(tmp_path, codes64):
    cond = text_condition(DataSource('synthetic', 32, n=64), p_uncond=0.2)
    assert torch.equal(cond.codes, codes64) and cond.p_uncond == 0.2 and cond.label_source == {'kind': 'synthetic'}
    refused(lambda: text_condition(DataSource('folder', 32, path=tmp_path)), 'synthetic', '--condition text')


# --- prompts ---

def test_prompt_condition_leaves_unknown_words_out_with_one_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        cond = prompt_condition('a happy cat with red hair', 2)
    assert len(caught) == 1 and 'happy, cat' in str(caught[0].message) and '\n' not in str(caught[0].message)
    row = [BOS] + [WORD_ID[w] for w in 'a with red hair'.split()]
    assert cond.tokens.tolist() == [row + [PAD] * (TEXT_LEN - 5)] * 2          # the gaps closed
    assert cond.drop.tolist() == [False, False]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        quiet = prompt_condition('a happy cat', 1, warn=False)
        known = prompt_condition(['someone', 'a face with grey eyes'], 2, length=8)
    assert caught == [] and quiet.tokens[0, :3].tolist() == [BOS, WORD_ID['a'], PAD]
    assert known.tokens.shape == (2, 8) and known.drop.tolist() == [False, False]


def test_unknown_words_do_not_push_known_ones_out():
    with warnings.catch_warnings(record=True):
        warnings.simplefilter('always')
        cond = prompt_condition('a ' + 'very ' * TEXT_LEN + 'red hair', 1)
    assert cond.tokens[0, :4].tolist() == [BOS, WORD_ID['a'], WORD_ID['red'], WORD_ID['hair']]


def test_an_empty_prompt_is_the_null_caption():
    assert prompt_condition('', 3).drop.tolist() == [True] * 3
    assert prompt_condition(['', 'a face', '!?'], 3).drop.tolist() == [True, False, True]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter('always')
        assert prompt_condition('zebra', 1).drop.tolist() == [True]             # nothing known said: the null too


def test_a_wrong_count_of_prompts_is_refused():
    refused(lambda: prompt_condition(['a face', 'someone'], 3), '2 prompts for 3 faces')
    refused(lambda: prompt_condition([], 1), '0 prompts for 1 faces')


# --- training and exact resume ---

def train_config(**kw):
    base = dict(steps=4, batch_size=4, warmup_steps=1, log_every=1, save_every=100, sample_every=0, sample_n=2,
                sample_steps=2, precision='fp32', seed=3)
    return TrainConfig(**{**base, **kw})


def text_run(run_dir, max_steps=None):
    source = DataSource('synthetic', 32, n=64)
    cond = text_condition(source, p_uncond=0.3)
    return Trainer(text_unet('tiny', 32), train_config(), source, run_dir, device='cpu', progress=False,
                   condition=cond).fit(max_steps)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "A tiny text run trained 4 steps in one go, and one stopped after 2 (resumed by the tests, on copies)."
    root = tmp_path_factory.mktemp('text_runs')
    one_go = text_run(root / 'one_go')
    text_run(root / 'stopped', max_steps=2)
    return root, one_go


def test_exact_resume_of_a_text_run(runs, tmp_path):
    root, one_go = runs
    run = tmp_path / 'stopped'
    shutil.copytree(root / 'stopped', run)
    assert [p.name for p in checkpoints(run)] == ['step_000002']
    record = read_config(run)['condition']
    assert record['kind'] == 'text' and record['vocabulary'] == VOCABULARY and record['p_uncond'] == 0.3
    refused(lambda: Trainer.resume(run, device='cpu', progress=False), 'text.resume_text')
    resumed = resume_text(run, device='cpu', progress=False)
    assert isinstance(resumed.condition, TextCondition) and resumed.step == 2
    resumed.fit()
    assert resumed.step == one_go.step == 4
    for a, b in ((one_go.ema.module.state_dict(), resumed.ema.module.state_dict()),
                 (one_go.model.state_dict(), resumed.model.state_dict())):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(one_go.gen.get_state(), resumed.gen.get_state())
    trained = resumed.model.state_dict()
    assert trained['text.embed.weight'].abs().sum() > 0                         # the encoder and W_o were trained on
    assert any(trained[k].abs().sum() > 0 for k in trained if '.cross.' in k and k.endswith('proj.weight'))


def test_resume_text_refuses_other_runs(runs, tmp_path):
    root, _ = runs
    run = tmp_path / 'run'
    shutil.copytree(root / 'stopped', run)
    config = json.loads((run / 'config.json').read_text())
    changed = {**config, 'condition': {**config['condition'], 'vocabulary': VOCABULARY + ['zebra']}}
    (run / 'config.json').write_text(json.dumps(changed))
    refused(lambda: resume_text(run, extra_steps=1, device='cpu', progress=False), str(run), 'another vocabulary',
            f'{V + 1} words')
    changed = {**config, 'condition': {**config['condition'], 'sha256': codes_fingerprint(torch.zeros(64, 9))}}
    (run / 'config.json').write_text(json.dumps(changed))
    refused(lambda: resume_text(run, extra_steps=1, device='cpu', progress=False), 'attributes differ')
    for other in (pretrained_dir('unconditional'), pretrained_dir('attributes')):
        refused(lambda: resume_text(other, extra_steps=1, device='cpu', progress=False), str(other),
                'not conditioned on captions')
    assert [p.name for p in checkpoints(run)] == ['step_000002']               # nothing was trained
