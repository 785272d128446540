"""Tests of face_diffusion.conditioning (chapter 10): attribute schemas, CelebA's attribute file, the labels of image
folders made here, condition dropout, the U-Net's grouped null embedding, conditioned training with exact resume, and
the coarse colour layout."""
import json, os

import numpy as np
import pytest
import torch
from PIL import Image

from face_diffusion.conditioning import (SYNTHETIC_SCHEMA, AttributeCondition, AttributeSchema, LayoutCondition,
                                         codes_fingerprint, conditioned_unet, load_labels,
                                         make_condition, read_celeba_attributes, resume_conditioned, synthetic_codes)
from face_diffusion.data import pixelate, synthetic_faces, to_float
from face_diffusion.runs import DataSource, checkpoints, load_run, read_config
from face_diffusion.training import TrainConfig, Trainer
from face_diffusion.unet import Condition, UNetConfig, build_unet
from one_line import refused

# three groups of different sizes, so that an offset taken from the wrong group shows
SCHEMA = AttributeSchema({'glasses': ['none', 'round', 'square', 'sunglasses'], 'Smiling': ['no', 'yes'],
                          'hair': ['dark', 'light', 'grey']})
OFFSETS = (0, 4, 6)                     # where each group's block starts in the one-hot vector of width 9


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    "Image folders decoded here are cached under the test's own folder, never in the user's cache."
    monkeypatch.setenv('FACE_DIFFUSION_CACHE', str(tmp_path / 'cache'))


# --- AttributeSchema ---

def test_encode_puts_one_1_per_known_group_at_its_offset():
    codes = torch.tensor([[2, 1, 0], [0, -1, 2], [-1, -1, -1], [3, 0, -1]])
    a, unknown = SCHEMA.encode(codes)
    #                          glasses       Smiling   hair
    assert a.tolist() == [[0, 0, 1, 0,    0, 1,    1, 0, 0],
                          [1, 0, 0, 0,    0, 0,    0, 0, 1],
                          [0, 0, 0, 0,    0, 0,    0, 0, 0],
                          [0, 0, 0, 1,    1, 0,    0, 0, 0]]
    assert unknown.tolist() == [[False, False, False], [False, True, False], [True, True, True], [False, False, True]]
    assert SCHEMA.width == 9 and SCHEMA.sizes == (4, 2, 3) and SCHEMA.names == ['glasses', 'Smiling', 'hair']
    # every code of every group lands at offset + code
    for g, (offset, size) in enumerate(zip(OFFSETS, SCHEMA.sizes)):
        for value in range(size):
            codes = torch.full((1, 3), -1); codes[0, g] = value
            a, unknown = SCHEMA.encode(codes)
            assert a[0].nonzero().flatten().tolist() == [offset + value]
            assert unknown[0].tolist() == [h != g for h in range(3)]


def test_encode_refuses_bad_codes_naming_the_image_and_group():
    refused(lambda: SCHEMA.encode(torch.tensor([[0, 0, 0], [4, 0, 0]])), 'code 4 of image 1', "'glasses'")
    refused(lambda: SCHEMA.encode(torch.tensor([[0, 0, 0], [0, 1, 0], [0, 0, -2]])), 'code -2 of image 2', "'hair'")
    refused(lambda: SCHEMA.encode(torch.tensor([[0, 2, 0]])), 'code 2 of image 0', "'Smiling'")
    refused(lambda: SCHEMA.encode(torch.tensor([[0, 1]])), '(N, 3)')
    refused(lambda: AttributeSchema({'glasses': ['none']}), "'glasses'", 'two values')


def test_parse_takes_names_in_any_case_and_values_by_name_or_index():
    assert SCHEMA.parse(['GLASSES=Round', 'smiling=yes']).tolist() == [1, 1, -1]
    assert SCHEMA.parse(' Hair = GREY ').tolist() == [-1, -1, 2]
    assert SCHEMA.parse({'glasses': 3, 'hair': '0'}).tolist() == [3, -1, 0]
    assert SCHEMA.parse(['glasses=2']).tolist() == [2, -1, -1]
    assert SCHEMA.parse([]).tolist() == [-1, -1, -1]
    classes = AttributeSchema({'class': ['Cat_A', 'dog']})                     # value names with capitals
    assert classes.parse('CLASS=cat_a').tolist() == [0] and classes.parse('class=DOG').tolist() == [1]
    assert classes.describe(classes.parse('class=CAT_A')) == {'class': 'Cat_A'}
    for value, code in (('1', 1), ('0', 0), ('yes', 1), ('no', 0), ('YES', 1), (1, 1), (0, 0)):
        assert SCHEMA.parse({'smiling': value}).tolist() == [-1, code, -1], value


def test_parse_refuses_bad_requests_in_one_line():
    msg = refused(lambda: SCHEMA.parse(['hat=round']), "unknown attribute 'hat'")
    assert 'glasses, Smiling, hair' in msg                                      # the valid attributes
    msg = refused(lambda: SCHEMA.parse(['glasses=oval']), "unknown value 'oval'", 'glasses')
    assert 'none, round, square, sunglasses' in msg                             # the valid values
    refused(lambda: SCHEMA.parse(['glasses=4']), "unknown value '4'")           # an index past the end
    refused(lambda: SCHEMA.parse(['smiling=2']), "unknown value '2'", 'no, yes')
    refused(lambda: SCHEMA.parse(['glasses=round', 'Glasses=none']), 'glasses', 'twice')
    refused(lambda: SCHEMA.parse({'hair': 'dark', 'HAIR': 'grey'}), 'hair', 'twice')
    refused(lambda: SCHEMA.parse(['glasses']), "'glasses'", 'name=value')
    refused(lambda: SCHEMA.parse('glasses'), "'glasses'", 'name=value')


def test_describe_round_trips_parse():
    for request in ({'glasses': 'none', 'Smiling': 'no', 'hair': 'dark'}, {'hair': 'grey'},
                    {'glasses': 'sunglasses', 'Smiling': 'yes'}, {}):
        codes = SCHEMA.parse(request)
        assert SCHEMA.describe(codes) == request
        assert torch.equal(SCHEMA.parse([f'{k}={v}' for k, v in SCHEMA.describe(codes).items()]), codes)
    assert AttributeSchema.from_dict(json.loads(json.dumps(SCHEMA.to_dict()))) == SCHEMA


# --- CelebA's attribute file ---

NAMES = ['5_o_Clock_Shadow', 'Eyeglasses', 'Smiling']
ROWS = [('000002.jpg', [-1, 1, 1]), ('000001.jpg', [1, -1, -1]), ('000010.png', [-1, -1, 1])]


def write_celeba(path, names=NAMES, rows=ROWS, count=None, newline='\n'):
    "An attribute file as CelebA writes it: the count, the names (and a trailing space), rows like '000001.jpg -1  1'."
    lines = [str(len(rows) if count is None else count), ' '.join(names) + ' ']
    lines += [name + ''.join(f' {v:>2}' for v in values) for name, values in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((newline.join(lines) + newline).encode())
    return path


@pytest.mark.parametrize('newline', ['\n', '\r\n'])
def test_celeba_attributes_are_read_as_yes_and_no(tmp_path, newline):
    path = write_celeba(tmp_path / 'list_attr_celeba.txt', newline=newline)
    assert '000002.jpg -1  1  1' in path.read_text()                           # CelebA's irregular spacing
    files, schema, codes = read_celeba_attributes(path)
    assert files == ['000002.jpg', '000001.jpg', '000010.png']
    assert schema.groups == {name: ['no', 'yes'] for name in NAMES}
    assert codes.dtype == torch.long and codes.tolist() == [[0, 1, 1], [1, 0, 0], [0, 0, 1]]   # 1 → 1, −1 → 0
    assert schema.describe(codes[0]) == {'5_o_Clock_Shadow': 'no', 'Eyeglasses': 'yes', 'Smiling': 'yes'}
    assert schema.parse(['eyeglasses=1', 'smiling=no']).tolist() == [-1, 1, 0]


MALFORMED = {   # name: (how to write the file, what the one-line message must say, …)
    'missing value': (lambda p: write_celeba(p, rows=[ROWS[0], ('000001.jpg', [1, -1]), ROWS[2]]), 'line 4'),
    'value 2': (lambda p: write_celeba(p, rows=[ROWS[0], ROWS[1], ('000010.png', [-1, 2, 1])]), 'line 5'),
    'wrong count': (lambda p: write_celeba(p, count=5), 'line 1'),
    'no count': (lambda p: write_celeba(p, count='images'), 'line 1'),
    'empty': (lambda p: p.write_bytes(b''), 'is empty'),
    'count only': (lambda p: p.write_text('3\n'), 'line 2', 'attribute names'),
    'count with a byte-order mark': (lambda p: p.write_text('\ufeff3\n', encoding='utf-8'), 'line 2', 'attribute names'),
    'binary': (lambda p: p.write_bytes(b'\xff\xd8\xff\xe0\x00\x10JFIF' + bytes(range(256)) * 4), 'not a text file'),
    'listed twice': (lambda p: write_celeba(p, rows=[ROWS[0], ROWS[1], ('000002.jpg', [1, 1, 1])]),
                     '000002.jpg', 'twice'),
}


@pytest.mark.parametrize('case', MALFORMED)
def test_malformed_attribute_files_are_refused_in_one_line(tmp_path, case):
    write, *fragments = MALFORMED[case]
    path = tmp_path / 'list_attr_celeba.txt'
    write(path)
    refused(lambda: read_celeba_attributes(path), str(path), *fragments)


def test_a_missing_attribute_file_is_named(tmp_path):
    refused(lambda: read_celeba_attributes(tmp_path / 'nowhere.txt'), 'nowhere.txt', 'does not exist',
            error=FileNotFoundError)


def test_a_file_listed_twice_is_named_with_its_line(tmp_path):
    path = write_celeba(tmp_path / 'list_attr_celeba.txt', rows=[ROWS[0], ROWS[1], ('000002.jpg', [1, 1, 1])])
    refused(lambda: read_celeba_attributes(path), '000002.jpg', 'line 5')


# --- the labels of an image folder ---

def save_image(path, red: bool, green: bool, seed: int):
    "A 40×40 image of one colour whose red and green tell its two labels (and a random blue), as the path's format."
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.empty((40, 40, 3), np.uint8)
    a[:] = (255 if red else 0, 255 if green else 0, np.random.default_rng(seed).integers(0, 256))
    Image.fromarray(a).save(path)


def colours(images):
    "(red, green) of each loaded image as 0/1: the labels `save_image` drew into it."
    x = images.float().mean((2, 3))
    return (x[:, :2] > 127).long()


# the folder's file order (sorted) is not the attribute file's order
CELEBA_IMAGES = {'000003.jpg': (1, -1), '000001.png': (-1, 1), '000004.png': (-1, -1), '000002.jpg': (1, 1)}


def celeba_folder(root, rows=CELEBA_IMAGES):
    "CelebA's layout: the images in root/img, list_attr_celeba.txt (Smiling, Eyeglasses) beside that folder."
    for k, (name, (smiling, glasses)) in enumerate(rows.items()):
        save_image(root / 'img' / name, smiling > 0, glasses > 0, k)
    write_celeba(root / 'list_attr_celeba.txt', ['Smiling', 'Eyeglasses'], list(rows.items()))
    return root / 'img'


def test_celeba_layout_labels_follow_the_folders_file_order(tmp_path):
    folder = celeba_folder(tmp_path / 'celeba')
    source = DataSource('folder', 16, path=folder)
    schema, codes, record = load_labels(source)
    assert [f.name for f in source.files] == ['000001.png', '000002.jpg', '000003.jpg', '000004.png']
    assert schema.groups == {'Smiling': ['no', 'yes'], 'Eyeglasses': ['no', 'yes']}
    assert codes.tolist() == [[0, 1], [1, 1], [1, 0], [0, 0]]
    assert torch.equal(codes, colours(source.load()))                          # each image gets its own row
    assert record == {'kind': 'celeba', 'path': str((tmp_path / 'celeba' / 'list_attr_celeba.txt').resolve())}
    # the same through make_condition, now from the image cache; and from an Anno/ folder beside the images
    cond = make_condition('attributes', DataSource('folder', 16, path=folder))
    assert list((tmp_path / 'cache').iterdir()) and torch.equal(cond.codes, codes) and cond.label_source == record
    (tmp_path / 'celeba' / 'Anno').mkdir()
    os.replace(tmp_path / 'celeba' / 'list_attr_celeba.txt', tmp_path / 'celeba' / 'Anno' / 'list_attr_celeba.txt')
    schema, again, record = load_labels(DataSource('folder', 16, path=folder))
    assert torch.equal(again, codes) and record['path'].endswith(os.path.join('Anno', 'list_attr_celeba.txt'))


def test_images_without_a_row_are_refused(tmp_path):
    folder = celeba_folder(tmp_path / 'celeba')
    save_image(folder / 'extra.jpg', True, True, 9)
    refused(lambda: load_labels(DataSource('folder', 16, path=folder)), '1 of 5 images', 'extra.jpg',
            'list_attr_celeba.txt')


def class_folder(root, classes={'cat_b': ['b1.png', 'b2.jpg'], 'cat_a': ['a1.png', 'a2.png', 'a3.jpg']}):
    "One subfolder per class; red marks the images of cat_b."
    for k, (name, files) in enumerate(classes.items()):
        for i, f in enumerate(files): save_image(root / name / f, name == 'cat_b', False, 10 * k + i)
    return root


def test_class_subfolders_are_the_labels(tmp_path):
    root = class_folder(tmp_path / 'classes')
    source = DataSource('folder', 16, path=root)
    schema, codes, record = load_labels(source)
    assert schema.groups == {'class': ['cat_a', 'cat_b']} and record == {'kind': 'classes'}
    assert [f.parent.name for f in source.files] == ['cat_a'] * 3 + ['cat_b'] * 2
    assert codes.tolist() == [[0], [0], [0], [1], [1]]
    assert torch.equal(codes[:, 0], colours(source.load())[:, 0])
    cond = make_condition('attributes', DataSource('folder', 16, path=root))
    assert torch.equal(cond.codes, codes) and conditioned_unet('tiny', 16, cond).attribute_groups == (2,)


def test_class_folders_that_cannot_be_labelled_are_refused(tmp_path):
    root = class_folder(tmp_path / 'loose')
    save_image(root / 'stray.png', False, False, 0)
    refused(lambda: load_labels(DataSource('folder', 16, path=root)), 'stray.png', 'outside class subfolders')
    only = class_folder(tmp_path / 'only', {'cat_a': ['a1.png', 'a2.png']})
    refused(lambda: load_labels(DataSource('folder', 16, path=only)), 'one class subfolder', 'cat_a')
    flat = tmp_path / 'flat'
    for i in range(3): save_image(flat / f'{i}.png', False, False, i)
    refused(lambda: make_condition('attributes', DataSource('folder', 16, path=flat)), 'outside class subfolders')


def test_linked_class_folders_are_labelled_like_real_ones(tmp_path):
    "FaceFolder follows folder links; the classes must follow them too."
    elsewhere = class_folder(tmp_path / 'elsewhere', {'cat_b': ['b1.png', 'b2.png']})
    root = class_folder(tmp_path / 'classes', {'cat_a': ['a1.png']})
    (root / 'cat_b').symlink_to(elsewhere / 'cat_b', target_is_directory=True)
    schema, codes, _ = load_labels(DataSource('folder', 16, path=root))
    assert schema.groups == {'class': ['cat_a', 'cat_b']} and codes.tolist() == [[0], [1], [1]]


def test_an_explicit_attributes_file_wins(tmp_path):
    folder = celeba_folder(tmp_path / 'celeba')                   # list_attr_celeba.txt beside it: the decoy
    flipped = {name: (-s, g) for name, (s, g) in CELEBA_IMAGES.items()}
    mine = write_celeba(tmp_path / 'labels' / 'my attributes.txt', ['Smiling', 'Eyeglasses'], list(flipped.items()))
    schema, codes, record = load_labels(DataSource('folder', 16, path=folder), attributes_file=mine)
    assert codes.tolist() == [[1, 1], [0, 1], [0, 0], [1, 0]]                 # Smiling flipped
    assert record == {'kind': 'celeba', 'path': str(mine.resolve())}
    cond = make_condition('attributes', DataSource('folder', 16, path=folder), attributes_file=mine)
    assert torch.equal(cond.codes, codes) and cond.label_source == record
    # an attributes file for a folder of classes takes over from the subfolders
    root = class_folder(tmp_path / 'classes', {'cat_a': ['000001.png', '000002.jpg'],
                                               'cat_b': ['000003.jpg', '000004.png']})
    schema, codes, record = load_labels(DataSource('folder', 16, path=root), attributes_file=mine)
    assert schema.names == ['Smiling', 'Eyeglasses'] and codes.tolist() == [[1, 1], [0, 1], [0, 0], [1, 0]]


# --- condition dropout ---

def random_codes(schema, n, seed=0, unknown=0.0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.stack([torch.randint(0, k, (n,), generator=g) for k in schema.sizes], 1)
    return torch.where(torch.rand(codes.shape, generator=g) < unknown, -1, codes)


def test_without_dropout_only_unknown_codes_are_dropped():
    codes = random_codes(SCHEMA, 50, unknown=0.3)
    cond = AttributeCondition(SCHEMA, codes, p_uncond=0, p_group=0)
    index = torch.randint(50, (2000,), generator=torch.Generator().manual_seed(1))
    c = cond.batch(index, None, torch.Generator().manual_seed(2))
    assert torch.equal(c.drop, codes[index] < 0) and c.drop.any() and not c.drop.all()
    assert torch.equal(c.attributes, SCHEMA.encode(codes)[0][index]) and c.image is None


def test_with_p_uncond_near_1_nearly_every_image_loses_every_group():
    codes = random_codes(SYNTHETIC_SCHEMA, 64)
    c = AttributeCondition(SYNTHETIC_SCHEMA, codes, p_uncond=0.999, p_group=0).batch(
        torch.arange(20000) % 64, None, torch.Generator().manual_seed(0))
    assert c.drop.all(1).float().mean() > 0.99
    assert torch.equal(c.drop.all(1), c.drop.any(1))          # without p_group, all groups or none


@pytest.mark.parametrize('p_uncond, p_group', [(0.1, 0.5), (0.3, 0.1), (0.2, 0.25)])
def test_dropout_frequencies_match_the_probabilities(p_uncond, p_group):
    "Image i loses all G groups with probability p_uncond, else each group on its own with probability p_group."
    G = len(SYNTHETIC_SCHEMA.sizes)
    cond = AttributeCondition(SYNTHETIC_SCHEMA, random_codes(SYNTHETIC_SCHEMA, 100), p_uncond=p_uncond, p_group=p_group)
    drop = cond.batch(torch.arange(20000) % 100, None, torch.Generator().manual_seed(0)).drop.float()
    q = 1 - p_uncond
    assert drop.mean().item() == pytest.approx(p_uncond + q * p_group, abs=0.02)            # one group
    assert drop.all(1).float().mean().item() == pytest.approx(p_uncond + q * p_group ** G, abs=0.02)   # all of them
    both = (drop[:, 0] * drop[:, 1]).mean().item()
    assert both == pytest.approx(p_uncond + q * p_group ** 2, abs=0.02)                    # two at once
    kept = drop[~drop.bool().all(1)]                             # images that kept a group lost the others alone
    assert kept.mean().item() == pytest.approx(p_group * (1 - p_group ** (G - 1)) / (1 - p_group ** G), abs=0.02)


def test_dropout_is_drawn_from_the_generator_it_is_given():
    "Exact resume needs the draws to come from the Trainer's generator only."
    cond = AttributeCondition(SYNTHETIC_SCHEMA, random_codes(SYNTHETIC_SCHEMA, 16))
    index = torch.arange(64) % 16
    torch.manual_seed(1)
    first = cond.batch(index, None, torch.Generator().manual_seed(5)).drop
    torch.manual_seed(2)
    again = cond.batch(index, None, torch.Generator().manual_seed(5)).drop
    other = cond.batch(index, None, torch.Generator().manual_seed(6)).drop
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_check_refuses_a_unet_or_images_that_do_not_fit():
    codes = random_codes(SCHEMA, 6)
    cond = AttributeCondition(SCHEMA, codes)
    images = torch.zeros(6, 3, 32, 32, dtype=torch.uint8)
    cond.check(conditioned_unet('tiny', 32, cond), images)                     # fits
    cond.check(UNetConfig.preset('tiny', cond_attributes=9, cond_groups=(4, 2, 3)), images)
    for unet in (UNetConfig.preset('tiny'), UNetConfig.preset('tiny', cond_attributes=8),
                 UNetConfig.preset('tiny', cond_attributes=9),                                  # one group of 9
                 UNetConfig.preset('tiny', cond_attributes=9, cond_groups=(2, 4, 3))):
        refused(lambda: cond.check(unet, images), f'{unet.cond_attributes} attributes', '9 in groups (4, 2, 3)',
                'conditioned_unet')
    refused(lambda: cond.check(conditioned_unet('tiny', 32, cond), images[:5]), '6 labels for 5 images')


@pytest.mark.parametrize('bad', [1, 1.0, -0.1, 1.5, float('nan'), True, '0.2', None])
def test_invalid_dropout_probabilities_are_refused(bad):
    refused(lambda: AttributeCondition(SCHEMA, random_codes(SCHEMA, 4), p_uncond=bad), 'p_uncond', '[0, 1)')
    refused(lambda: AttributeCondition(SCHEMA, random_codes(SCHEMA, 4), p_group=bad), 'p_group', '[0, 1)')


# --- the U-Net's grouped null embedding ---

def grouped_unet(schema=SCHEMA):
    torch.manual_seed(0)
    config = UNetConfig.preset('tiny', zero_init=False, cond_attributes=schema.width, cond_groups=list(schema.sizes))
    return build_unet(config).eval()


def test_each_dropped_group_swaps_its_own_term_for_its_null():
    "embedding(a, drop) = Σ_g (drop_g ? n_g : W_g a_g), written out per image and group."
    emb = grouped_unet().cond_embed.attributes
    codes = random_codes(SCHEMA, 8, seed=3)
    a, _ = SCHEMA.encode(codes)
    W, null = emb.proj.weight.detach(), emb.null.detach()                    # (D, 9), (3, D)
    blocks = [slice(o, o + s) for o, s in zip(OFFSETS, SCHEMA.sizes)]
    term = lambda i, g: a[i, blocks[g]] @ W[:, blocks[g]].T                  # W_g a_g
    with torch.no_grad():
        full = emb(a, None, 8)
        assert torch.allclose(full, a @ W.T, atol=1e-6)
        assert torch.allclose(emb(a, torch.zeros(8, 3, dtype=torch.bool), 8), full, atol=1e-6)
        for g in range(3):                                                   # one group dropped
            drop = torch.zeros(8, 3, dtype=torch.bool); drop[:, g] = True
            expected = full - a[:, blocks[g]] @ W[:, blocks[g]].T + null[g]
            assert torch.allclose(emb(a, drop, 8), expected, atol=1e-6), g
        drop = torch.rand(8, 3, generator=torch.Generator().manual_seed(0)) < 0.5   # any mix, per image
        expected = torch.stack([sum(null[g] if drop[i, g] else term(i, g) for g in range(3)) for i in range(8)])
        assert torch.allclose(emb(a, drop, 8), expected, atol=1e-6)
        assert not torch.allclose(null[0], null[1])                           # one null per group


def test_a_dropped_group_reaches_the_output_only_through_its_null():
    model = grouped_unet()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([10, 200, 500, 900])
    codes = torch.tensor([[0, 0, 0], [1, 1, 1], [2, 0, 2], [3, 1, 0]])
    other = torch.tensor([[3, 1, 2], [0, 0, 0], [1, 1, 1], [2, 0, 2]])       # every group's value changed
    out = lambda codes, drop: model(x, t, Condition(attributes=SCHEMA.encode(codes)[0], drop=drop))
    with torch.no_grad():
        for g in range(3):
            drop = torch.zeros(4, 3, dtype=torch.bool); drop[:, g] = True
            changed_g, changed_h = codes.clone(), codes.clone()
            changed_g[:, g] = other[:, g]
            h = (g + 1) % 3; changed_h[:, h] = other[:, h]
            dropped = out(codes, drop)
            assert torch.equal(out(changed_g, drop), dropped)                 # group g's value is not read …
            assert (out(changed_h, drop) - dropped).abs().amax((1, 2, 3)).min() > 1e-4   # … the others' are
            assert (out(codes, None) - dropped).abs().amax((1, 2, 3)).min() > 1e-4       # and its null differs from it


def test_dropping_all_groups_one_flag_per_image_or_per_group():
    model = grouped_unet()
    x, t = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([5, 400, 800])
    a, _ = SCHEMA.encode(random_codes(SCHEMA, 3, seed=4))
    with torch.no_grad():
        per_group = model(x, t, Condition(attributes=a, drop=torch.ones(3, 3, dtype=torch.bool)))
        assert torch.equal(model(x, t, Condition(attributes=a, drop=torch.ones(3, dtype=torch.bool))), per_group)
        assert torch.equal(model(x, t, Condition(attributes=a).unconditional()), per_group)
        assert torch.allclose(model(x, t, Condition()), per_group, atol=1e-6)   # no attributes: Σ_g n_g as well
        some = torch.tensor([True, False, True])                              # (N,): whole images
        mixed = model(x, t, Condition(attributes=a, drop=some))
        assert torch.equal(mixed, model(x, t, Condition(attributes=a, drop=some[:, None].expand(3, 3).clone())))
        assert torch.equal(mixed[1], model(x, t, Condition(attributes=a))[1])


def test_bad_drops_and_groups_are_refused():
    model = grouped_unet()
    x, t = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    a, _ = SCHEMA.encode(random_codes(SCHEMA, 4))
    for shape in ((4, 2), (4, 4), (4, 3, 1)):
        drop = torch.zeros(shape, dtype=torch.bool)
        refused(lambda: model(x, t, Condition(attributes=a, drop=drop)), 'cond.drop', f'{shape}', '(4,)', '(4, 3)')
    refused(lambda: model(x, t, Condition(attributes=a, drop=torch.zeros(5, dtype=torch.bool))), 'cond.drop', '(5,)')
    refused(lambda: UNetConfig.preset('tiny', cond_attributes=9, cond_groups=(4, 2, 2)), 'cond_groups (4, 2, 2)',
            'cond_attributes = 9')
    refused(lambda: UNetConfig.preset('tiny', cond_attributes=9, cond_groups=(4, 0, 2, 3)), 'cond_groups')
    refused(lambda: UNetConfig.preset('tiny', cond_groups=(1, 1)), 'cond_attributes = 0')


# --- conditioned training and resume ---

def train_config(**kw):
    base = dict(steps=2, batch_size=4, warmup_steps=1, log_every=1, save_every=100, sample_every=0, sample_n=2,
                sample_steps=2, precision='fp32', seed=3)
    return TrainConfig(**{**base, **kw})


def synthetic_run(run_dir, tc=None, max_steps=None, condition=None, **cond_kw):
    "A tiny U-Net trained on 64 synthetic faces with their attributes (or `condition`)."
    source = DataSource('synthetic', 32, n=64)
    cond = condition or make_condition('attributes', source, **cond_kw)
    return Trainer(conditioned_unet('tiny', 32, cond), tc or train_config(), source, run_dir, device='cpu',
                   progress=False, condition=cond).fit(max_steps)


def test_a_conditioned_run_records_its_condition_and_resumes_with_it(tmp_path):
    run = tmp_path / 'run'
    synthetic_run(run, p_uncond=0.3, p_group=0.1)
    record = read_config(run)['condition']
    codes = synthetic_codes(synthetic_faces(64, 32)[1])
    assert record == {'kind': 'attributes', 'groups': SYNTHETIC_SCHEMA.groups, 'labels': {'kind': 'synthetic'},
                      'count': 64, 'sha256': codes_fingerprint(codes), 'p_uncond': 0.3, 'p_group': 0.1}
    assert read_config(run)['unet']['cond_groups'] == list(SYNTHETIC_SCHEMA.sizes)
    refused(lambda: Trainer.resume(run, device='cpu', progress=False), str(run), 'conditioned', 'resume_conditioned')
    resumed = resume_conditioned(run, extra_steps=1, device='cpu', progress=False)
    assert resumed.step == 2 and resumed.condition.p_uncond == 0.3 and torch.equal(resumed.condition.codes, codes)
    resumed.fit()
    assert load_run(run).step == 3 and [p.name for p in checkpoints(run)][-1] == 'step_000003'
    # other labels than the run's are refused
    config = json.loads((run / 'config.json').read_text())
    config['condition']['sha256'] = codes_fingerprint(codes.flip(0))
    (run / 'config.json').write_text(json.dumps(config))
    refused(lambda: resume_conditioned(run, extra_steps=1, device='cpu', progress=False), 'labels')
    assert load_run(run).step == 3


def test_exact_resume_with_a_condition(tmp_path):
    tc = train_config(steps=4, grad_accum=2)
    one_go = synthetic_run(tmp_path / 'one_go', tc)
    stopped = synthetic_run(tmp_path / 'stopped', tc, max_steps=2)
    assert stopped.step == 2 and [p.name for p in checkpoints(tmp_path / 'stopped')] == ['step_000002']
    del stopped
    resumed = resume_conditioned(tmp_path / 'stopped', device='cpu', progress=False).fit()
    assert resumed.step == one_go.step == 4
    a, b = one_go.ema.module.state_dict(), resumed.ema.module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = one_go.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(one_go.gen.get_state(), resumed.gen.get_state())
    assert b['cond_embed.attributes.proj.weight'].abs().sum() > 0            # the condition was trained on
    assert b['cond_embed.attributes.null'].abs().sum() > 0                   # and so was its null


def test_labels_given_in_python_resume_only_with_the_same_condition(tmp_path):
    images, attributes = synthetic_faces(16, 32, seed=2)
    cond = AttributeCondition(SYNTHETIC_SCHEMA, synthetic_codes(attributes))
    run = tmp_path / 'run'
    Trainer(conditioned_unet('tiny', 32, cond), train_config(), images, run, device='cpu', progress=False,
            condition=cond).fit()
    refused(lambda: resume_conditioned(run, images, extra_steps=1, device='cpu', progress=False), 'given in Python',
            'condition=')
    other = AttributeCondition(SYNTHETIC_SCHEMA, synthetic_codes(attributes).flip(0))
    refused(lambda: Trainer.resume(run, images, 1, device='cpu', progress=False, condition=other), 'another condition')
    same = AttributeCondition(SYNTHETIC_SCHEMA, synthetic_codes(attributes))
    assert Trainer.resume(run, images, 1, device='cpu', progress=False, condition=same).fit().step == 3


def test_a_folder_run_refuses_a_changed_attribute_file(tmp_path):
    folder = celeba_folder(tmp_path / 'celeba')
    source = DataSource('folder', 16, path=folder)
    cond = make_condition('attributes', source)
    run = tmp_path / 'run'
    Trainer(conditioned_unet('tiny', 16, cond), train_config(), source, run, device='cpu', progress=False,
            condition=cond).fit()
    assert read_config(run)['condition']['labels'] == cond.label_source
    attributes = tmp_path / 'celeba' / 'list_attr_celeba.txt'
    original = attributes.read_bytes()
    attributes.write_bytes(original.replace(b'000002.jpg  1  1', b'000002.jpg  1 -1'))   # one label changed
    assert attributes.read_bytes() != original
    refused(lambda: resume_conditioned(run, extra_steps=1, device='cpu', progress=False), 'labels')
    attributes.write_bytes(original)
    assert resume_conditioned(run, extra_steps=1, device='cpu', progress=False).fit().step == 3


# --- the coarse layout ---

@pytest.mark.parametrize('size, cells', [(32, 4), (16, 2), (16, 1), (32, 8)])
def test_the_layout_is_the_cell_means(size, cells):
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    layout = pixelate(x, cells)
    assert layout.shape == x.shape
    s = size // cells
    for i in range(cells):
        for j in range(cells):
            rows, cols = slice(i * s, (i + 1) * s), slice(j * s, (j + 1) * s)
            block, cell = layout[..., rows, cols], x[..., rows, cols]
            assert torch.equal(block, block[..., :1, :1].expand_as(block))   # constant on the cell
            assert torch.allclose(block[..., 0, 0], cell.mean((-2, -1)), atol=1e-6)   # the image's mean there


def test_layout_condition_batch_and_refusals():
    x0 = to_float(synthetic_faces(4, 32)[0])
    c = LayoutCondition(cells=4).batch(torch.arange(4), x0, torch.Generator())
    assert c.attributes is None and c.drop is None and torch.equal(c.image, pixelate(x0, 4))
    for bad in (0, -1, 2.5, True, '4'):
        refused(lambda: LayoutCondition(cells=bad), 'cells')


def test_training_with_a_layout_condition(tmp_path):
    source = DataSource('synthetic', 32, n=64)
    cond = make_condition('layout', source, cells=4)
    unet = conditioned_unet('tiny', 32, cond)
    assert unet.cond_image_channels == 3 and unet.cond_attributes == 0
    tr = Trainer(unet, train_config(), source, tmp_path / 'run', device='cpu', progress=False, condition=cond).fit()
    assert read_config(tmp_path / 'run')['condition'] == {'kind': 'layout', 'cells': 4}
    assert tr.model.conv_in.weight[:, 3:].abs().sum() > 0                    # the layout channels were trained on
    assert (tmp_path / 'run' / 'samples' / 'step_000002.png').is_file()      # previews drew with layouts
    resumed = resume_conditioned(tmp_path / 'run', extra_steps=1, device='cpu', progress=False).fit()
    assert resumed.step == 3 and isinstance(resumed.condition, LayoutCondition)
    for other in (UNetConfig.preset('tiny'), UNetConfig.preset('tiny', cond_image_channels=1)):
        refused(lambda: Trainer(other, train_config(), source, tmp_path / 'wrong', device='cpu', condition=cond),
                'cond_image_channels=3', f'(it has {other.cond_image_channels})')
