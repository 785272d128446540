"""face_diffusion.data: face folders on small image files made here, bad input, cache, helpers."""
import hashlib, os, time, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from face_diffusion.data import (ATTRIBUTES, FaceFolder, SyntheticFaces, image_grid, load_image, portrait,
                                 random_flip, save_grid, synthetic_faces, to_float, to_uint8)


def tree_hash(root):
    "A hash of every path, byte and modification time under root."
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob('*')):
        st = p.stat()
        h.update(f'{p.relative_to(root)} {p.is_dir()} {st.st_mtime_ns}'.encode())
        if p.is_file(): h.update(p.read_bytes())
    return h.hexdigest()


def photo(w=40, h=30, seed=0):
    rng = np.random.default_rng(seed)
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]       # red grows to the right
    a[..., 1] = rng.integers(0, 256, (h, w))
    a[..., 2] = 80
    return Image.fromarray(a)


@pytest.fixture
def folder(tmp_path):
    "A folder tree with every supported kind of image, plus a text file and a corrupt JPEG."
    root = tmp_path / 'faces'
    (root / 'sub' / 'deeper').mkdir(parents=True)
    photo(seed=1).save(root / 'rgb.jpg')
    photo(seed=2).save(root / 'sub' / 'rgb2.JPEG')
    photo(seed=3).convert('L').save(root / 'gray.png')
    rgba = photo(seed=4).convert('RGBA')
    alpha = np.full((30, 40), 255, np.uint8); alpha[:, :20] = 0           # left half transparent
    rgba.putalpha(Image.fromarray(alpha)); rgba.save(root / 'sub' / 'rgba.png')
    photo(seed=5).convert('P', palette=Image.Palette.ADAPTIVE, colors=8).save(root / 'palette.png')
    Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)).save(root / 'sub' / 'deeper' / 'sixteen.png')
    photo(seed=6).save(root / 'photo.webp')
    photo(seed=7).save(root / 'photo.bmp')
    (root / 'notes.txt').write_text('attributes, not an image')
    (root / 'sub' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not really a jpeg')
    return root


def load(root, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        ds = FaceFolder(root, **kw)
    return ds, [str(w.message) for w in caught]


def test_folder_modes_and_warning(folder, tmp_path):
    before = tree_hash(folder)
    ds, warned = load(folder, size=16, cache_dir=tmp_path / 'cache')
    names = sorted(f.name for f in ds.files)
    assert names == sorted(['rgb.jpg', 'rgb2.JPEG', 'gray.png', 'rgba.png', 'palette.png', 'sixteen.png',
                            'photo.webp', 'photo.bmp'])
    assert ds.images.shape == (8, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds[0].shape == (3, 16, 16) and len(ds) == 8
    # one warning naming both skipped files and their count
    assert len(warned) == 1 and 'skipped 2 files' in warned[0]
    assert 'notes.txt' in warned[0] and 'broken.jpg' in warned[0]
    # grayscale and 16-bit images become three equal channels; transparency becomes white
    by_name = {f.name: img for f, img in zip(ds.files, ds.images)}
    for name in ['gray.png', 'sixteen.png']:
        img = by_name[name].int()
        assert (img[0] == img[1]).all() and (img[1] == img[2]).all()
    assert by_name['sixteen.png'].float().std() > 10                        # rescaled, not clipped to white
    left = by_name['rgba.png'][:, :, :6].float()
    assert left.min() > 245                                                # transparent half is white
    assert tree_hash(folder) == before                                     # nothing in the folder changed
    assert not list(folder.rglob('*.npz'))


def test_cache_reused_and_rebuilt(folder, tmp_path):
    cache = tmp_path / 'cache'
    before = tree_hash(folder)
    first, _ = load(folder, size=16, cache_dir=cache)
    assert first.cache_path.parent == cache and first.cache_path.is_file()
    again, warned = load(folder, size=16, cache_dir=cache)
    assert torch.equal(again.images, first.images) and again.files == first.files
    assert len(warned) == 1 and 'broken.jpg' in warned[0]                   # skipped files still named
    assert again.cache_path == first.cache_path and len(list(cache.iterdir())) == 1
    other_size, _ = load(folder, size=8, cache_dir=cache)
    assert other_size.cache_path != first.cache_path and other_size.images.shape[-1] == 8
    assert tree_hash(folder) == before
    # a changed folder gets a new cache with the new file
    photo(seed=9).save(folder / 'new.png')
    changed, _ = load(folder, size=16, cache_dir=cache)
    assert changed.cache_path != first.cache_path and len(changed) == len(first) + 1
    assert not first.cache_path.exists() and other_size.cache_path.exists()   # stale cache dropped, 8 px kept
    # an edited file (new mtime) is decoded again
    img = photo(seed=10); img.save(folder / 'new.png')
    os.utime(folder / 'new.png', ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    edited, _ = load(folder, size=16, cache_dir=cache)
    assert edited.cache_path != changed.cache_path


def test_default_cache_dir_outside_folder(folder, tmp_path, monkeypatch):
    monkeypatch.setenv('FACE_DIFFUSION_CACHE', str(tmp_path / 'default_cache'))
    ds, _ = load(folder, size=8)
    assert ds.cache_path.parent == tmp_path / 'default_cache' and ds.cache_path.is_file()
    monkeypatch.delenv('FACE_DIFFUSION_CACHE')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    ds, _ = load(folder, size=8)
    assert ds.cache_path.parent == tmp_path / 'xdg' / 'face_diffusion'
    with pytest.raises(ValueError, match='inside the image folder'):
        FaceFolder(folder, size=8, cache_dir=folder / 'cache')
    assert not (folder / 'cache').exists()


def test_no_cache(folder):
    ds, _ = load(folder, size=8, cache_dir=False)
    assert ds.cache_path is None and len(ds) == 8


def test_center_and_celeba_crop(tmp_path):
    root = tmp_path / 'celeba'; root.mkdir()
    a = np.zeros((218, 178, 3), np.uint8)
    a[51:191, 19:159] = 255                                                  # the 140×140 face box is white
    Image.fromarray(a).save(root / '000001.png')
    celeba, _ = load(root, size=28, crop='celeba', cache_dir=tmp_path / 'c')
    assert celeba.images[..., 1:-1, 1:-1].min() >= 250                       # the face box (edges: filter support)
    assert celeba.images.float().mean() > 245
    center, _ = load(root, size=28, crop='center', cache_dir=tmp_path / 'c')
    assert center.images.float().mean() < 200                                # the centre square includes black
    assert torch.equal(load_image(root / '000001.png', 28, crop='celeba'), celeba.images[0])


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing'):
        FaceFolder(tmp_path / 'missing')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='empty') as e:
        FaceFolder(tmp_path / 'empty')
    assert str(tmp_path / 'empty') in str(e.value) and '\n' not in str(e.value)
    (tmp_path / 'texts').mkdir(); (tmp_path / 'texts' / 'a.txt').write_text('hello')
    with pytest.raises(ValueError, match='no .jpg') as e:
        FaceFolder(tmp_path / 'texts')
    assert str(tmp_path / 'texts') in str(e.value) and '\n' not in str(e.value)
    (tmp_path / 'corrupt').mkdir(); (tmp_path / 'corrupt' / 'a.png').write_bytes(b'not a png')
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ValueError, match='no readable images'):
        warnings.simplefilter('always')
        FaceFolder(tmp_path / 'corrupt', cache_dir=tmp_path / 'c')
    assert len(caught) == 1 and 'a.png' in str(caught[0].message)
    (tmp_path / 'file.png').write_bytes(b'x')
    with pytest.raises(ValueError, match='not a folder'):
        FaceFolder(tmp_path / 'file.png')
    (tmp_path / 'ok').mkdir(); photo().save(tmp_path / 'ok' / 'a.png')
    with pytest.raises(ValueError, match='crop'):
        FaceFolder(tmp_path / 'ok', crop='square')
    with pytest.raises(ValueError, match='size'):
        FaceFolder(tmp_path / 'ok', size=0)


def test_load_image_and_portrait(tmp_path):
    photo(40, 30).save(tmp_path / 'a.png')
    img = load_image(tmp_path / 'a.png')
    assert img.shape == (3, 30, 40) and img.dtype == torch.uint8
    sq = load_image(tmp_path / 'a.png', size=12)
    assert sq.shape == (3, 12, 12)
    assert sq[0, :, 0].float().mean() < sq[0, :, -1].float().mean()         # left stays left
    with pytest.raises(FileNotFoundError, match='nope.png'):
        load_image(tmp_path / 'nope.png')
    (tmp_path / 'bad.png').write_bytes(b'garbage')
    with pytest.raises(ValueError, match='bad.png'):
        load_image(tmp_path / 'bad.png')
    p = portrait(32)
    assert p.shape == (3, 32, 32) and p.dtype == torch.uint8 and p.float().std() > 20


def test_float_uint8_and_grid(tmp_path):
    x = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8)
    f = to_float(x)
    assert f.dtype == torch.float32 and f.min() >= -1 and f.max() <= 1
    assert torch.equal(to_uint8(f), x)
    assert torch.equal(to_float(x.numpy()), f)
    grid = image_grid(f, nrow=2, pad=1)
    assert grid.shape == (1 + 2 * 6, 1 + 2 * 7, 3)
    assert np.array_equal(grid[1:6, 1:7], x[0].permute(1, 2, 0).numpy())
    assert image_grid(x[:, :1]).shape[-1] == 3                               # one channel shown as gray
    path = save_grid(x, tmp_path / 'sub' / 'grid.png', nrow=4)
    assert Image.open(path).size == (2 + 4 * 8, 2 + 1 * 7)
    with pytest.raises(ValueError, match='channels'):
        image_grid(torch.zeros(2, 4, 3, 3))


def test_random_flip():
    x = torch.arange(2 * 3 * 2 * 4, dtype=torch.uint8).view(2, 3, 2, 4).repeat(50, 1, 1, 1)
    y = random_flip(x, torch.Generator().manual_seed(0))
    kept = (y == x).flatten(1).all(1)
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    assert (kept ^ flipped).all() and 20 < flipped.sum() < 80
    assert torch.equal(y, random_flip(x, torch.Generator().manual_seed(0)))  # seeded
    assert random_flip(x[0]).shape == x[0].shape


def test_synthetic_faces_api():
    images, attrs = synthetic_faces(5, size=16, seed=0)
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.uint8
    assert set(attrs) == set(ATTRIBUTES)
    for name, codes in attrs.items():
        assert codes.dtype == torch.int64 and codes.shape == (5,)
        assert 0 <= codes.min() and codes.max() < len(ATTRIBUTES[name])
    for size in (15, 129, 64.0):
        with pytest.raises(ValueError, match='16 to 128'):
            synthetic_faces(2, size=size)
    ds = SyntheticFaces(3, size=16, seed=0)
    assert torch.equal(ds[2], images[2]) and len(ds) == 3
    assert synthetic_faces(0, size=16)[0].shape == (0, 3, 16, 16)


def old_image_grid(images, nrow=None, pad=2, pad_value=255):
    "The hand-written tiler image_grid replaced, kept here as the layout it must reproduce."
    x = images.permute(0, 2, 3, 1).numpy()
    n, h, w, _ = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    grid = np.full((pad + rows * (h + pad), pad + nrow * (w + pad), 3), pad_value, np.uint8)
    for i, img in enumerate(x):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return grid


@pytest.mark.parametrize('n,nrow,pad', [(1, None, 2), (1, 3, 1), (2, 4, 2), (5, 3, 1), (7, None, 2), (9, None, 0),
                                        (6, 1, 3)])
def test_image_grid_keeps_its_layout(n, nrow, pad):
    x = torch.randint(0, 256, (n, 3, 5, 4), dtype=torch.uint8)
    assert np.array_equal(image_grid(x, nrow=nrow, pad=pad), old_image_grid(x, nrow=nrow, pad=pad))
    with pytest.raises(ValueError, match='at least one image'):
        image_grid(torch.zeros(0, 3, 4, 4))


def test_save_grid_refuses_images_it_would_spoil(tmp_path):
    out = tmp_path / 'grid.png'
    cases = [(torch.linspace(0, 255, 96).view(2, 3, 4, 4), 'span 0 … 255'),  # floats in 0…255: all white before
             (torch.full((2, 3, 4, 4), -3.0), 'rescale them to \\[-1, 1\\]'),
             (torch.full((1, 3, 4, 4), float('nan')), '48 NaN or infinite'),
             ([torch.zeros(3, 4, 4), torch.full((3, 4, 4), float('inf'))], 'NaN or infinite'),
             (torch.full((1, 3, 4, 4), 200, dtype=torch.int64), 'images.to\\(torch.uint8\\)')]
    for images, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            save_grid(images, out)
        assert '\n' not in str(e.value) and 'save_grid' in str(e.value)
        assert not out.exists()
    floats = torch.rand(2, 3, 4, 4) * 2 - 1
    floats[0, 0, 0, 0], floats[1, 0, 0, 0] = 1.01, -1.01                     # rounding overshoot is accepted
    assert np.array_equal(np.asarray(Image.open(save_grid(floats, out))), image_grid(floats))
    assert Image.open(save_grid(torch.rand(2, 3, 4, 4), out)).size == (2 + 2 * 6, 2 + 1 * 6)   # [0, 1] ⊂ [-1, 1]
    assert save_grid(torch.zeros(2, 3, 4, 4, dtype=torch.uint8) + 255, out).is_file()


def test_folder_follows_folder_links_once(tmp_path):
    root, outside = tmp_path / 'faces', tmp_path / 'elsewhere'
    (root / 'sub').mkdir(parents=True); outside.mkdir()
    photo(seed=1).save(root / 'a.png'); photo(seed=2).save(root / 'sub' / 'b.png')
    photo(seed=3).save(outside / 'c.png'); photo(seed=4).save(outside / 'd.png')
    (root / 'linked').symlink_to(outside, target_is_directory=True)          # a folder elsewhere
    (root / 'sub' / 'up').symlink_to(root, target_is_directory=True)         # a loop back up the tree
    (root / 'twice').symlink_to(outside, target_is_directory=True)           # the same folder again
    ds, warned = load(root, size=8, cache_dir=tmp_path / 'cache')
    assert sorted(f.relative_to(root).as_posix() for f in ds.files) == ['a.png', 'linked/c.png', 'linked/d.png',
                                                                        'sub/b.png']
    assert not warned
    photo(seed=5).save(outside / 'e.png')                                    # the cache sees files behind links
    again, _ = load(root, size=8, cache_dir=tmp_path / 'cache')
    assert again.cache_path != ds.cache_path and len(again) == 5


def test_folder_skips_broken_file_links(tmp_path):
    root = tmp_path / 'faces'; root.mkdir()
    photo(seed=1).save(root / 'a.png'); photo(seed=2).save(root / 'b.jpg')
    (root / 'gone.jpg').symlink_to(tmp_path / 'moved_away.jpg')               # dangling
    (root / 'l1.png').symlink_to(root / 'l2.png'); (root / 'l2.png').symlink_to(root / 'l1.png')   # a loop
    (root / 'self').symlink_to(root / 'self')                                 # a folder-like loop
    (root / 'ok.png').symlink_to(root / 'a.png')                              # a good file link is an image
    ds, warned = load(root, size=8, cache_dir=tmp_path / 'cache')
    assert sorted(f.name for f in ds.files) == ['a.png', 'b.jpg', 'ok.png']
    assert torch.equal(ds.images[0], ds.images[2])
    assert len(warned) == 1 and 'skipped 4 files' in warned[0]
    for name in ['gone.jpg (dangling link)', 'l1.png (link loop)', 'l2.png (link loop)', 'self (link loop)']:
        assert name in warned[0]
    # the link's target appears: a new cache, one more image, one file fewer skipped
    photo(seed=3).save(tmp_path / 'moved_away.jpg')
    healed, warned = load(root, size=8, cache_dir=tmp_path / 'cache')
    assert healed.cache_path != ds.cache_path and len(healed) == 4 and 'skipped 3 files' in warned[0]
    (tmp_path / 'only').mkdir(); (tmp_path / 'only' / 'x.png').symlink_to(tmp_path / 'nothing.png')
    with pytest.raises(ValueError, match=r'no \.jpg.*x\.png \(dangling link\)'):
        FaceFolder(tmp_path / 'only', cache_dir=False)


def test_folder_warns_about_small_images(tmp_path):
    root = tmp_path / 'faces'; root.mkdir()
    photo(40, 30, seed=1).save(root / 'big.png')                             # short side 30 ≥ 32/2
    photo(15, 40, seed=2).save(root / 'narrow.png')                          # short side 15 < 16
    photo(12, 10, seed=3).save(root / 'tiny.jpg')
    photo(16, 16, seed=4).save(root / 'half.png')                            # exactly half: fine
    for attempt in ('decoded', 'from the cache'):
        ds, warned = load(root, size=32, cache_dir=tmp_path / 'cache')
        assert len(ds) == 4 and ds.images.shape[-1] == 32, attempt
        assert warned == ['2 images are smaller than 16 px (half of size=32) on the short side and were upscaled: '
                          'narrow.png (15 px), tiny.jpg (10 px)'], attempt
    ds, warned = load(root, size=20, cache_dir=tmp_path / 'cache')           # another size: another verdict
    assert warned == []
    photo(9, 9, seed=5).convert('L').save(root / 'z.png')
    _, warned = load(root, size=20, cache_dir=tmp_path / 'cache')
    assert len(warned) == 1 and warned[0].startswith('1 image is smaller than 10 px') and 'z.png (9 px)' in warned[0]
    celeba, warned = load(root, size=32, crop='celeba', cache_dir=False)    # the side of the crop is what counts
    assert len(celeba) == 5 and len(warned) == 1 and 'half.png (12 px)' in warned[0]   # 140/178 of 16 px wide


def test_imports_without_matplotlib():
    "The package's data and metrics modules import without matplotlib (and without torchvision, used only to tile)."
    import subprocess, sys
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('matplotlib', 'torchvision'): raise ImportError(f'no {name} here')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import face_diffusion.data, face_diffusion.faces, face_diffusion.metrics\n"
            "assert not any(m.startswith(('matplotlib', 'torchvision')) for m in sys.modules)\n"
            "face_diffusion.data.synthetic_faces(2, 16)\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def portrait_by_pil(size):
    "The portrait decoded with Pillow alone: RGB, the central square, Lanczos to size×size (H×W×3)."
    from matplotlib import cbook
    with Image.open(cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)) as im:
        im = im.convert('RGB')
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side)))


@pytest.mark.parametrize('size', [16, 64])
def test_portrait_pixels_match_a_plain_pil_decode(size):
    "Shape and dtype would pass an all-black, BGR or transposed image; the bytes must be Pillow's own."
    got = portrait(size).permute(1, 2, 0).numpy()
    want = portrait_by_pil(size)
    assert np.array_equal(got, want)
    for broken in (got[..., ::-1], got.transpose(1, 0, 2), np.zeros_like(got)):
        assert not np.array_equal(broken, want)


def test_cached_folder_is_not_decoded_again(folder, tmp_path):
    "A FaceFolder that ignored its cache would still give the same images: make decoding raise the second time."
    from unittest import mock
    first, _ = load(folder, size=16, cache_dir=tmp_path / 'cache')
    with mock.patch.object(FaceFolder, '_decode_all', side_effect=AssertionError('decoded again')):
        again, _ = load(folder, size=16, cache_dir=tmp_path / 'cache')
        assert again.cache_path.is_file() and torch.equal(again.images, first.images)
        with pytest.raises(AssertionError, match='decoded again'):
            load(folder, size=16, cache_dir=False)                          # without the cache it does decode


def test_folder_conversions_keep_the_picture(tmp_path):
    "16-bit, palette and transparent images must keep the picture, not just become three channels."
    root = tmp_path / 'faces'
    root.mkdir()
    base = photo(48, 48, seed=11)
    gray = np.asarray(base.convert('L'))
    Image.fromarray(gray).save(root / 'gray.png')
    Image.fromarray(gray.astype(np.uint16) * 257).save(root / 'sixteen.png')        # the same gray, 16 bits
    base.convert('P', palette=Image.Palette.ADAPTIVE, colors=64).save(root / 'palette.png')
    base.save(root / 'rgb.png')
    rgba = base.convert('RGBA'); alpha = np.full((48, 48), 255, np.uint8); alpha[:8, :8] = 0
    rgba.putalpha(Image.fromarray(alpha)); rgba.save(root / 'corner.png')
    ds, _ = load(root, size=48, cache_dir=False)
    by = {f.name: img.int() for f, img in zip(ds.files, ds.images)}
    assert (by['sixteen.png'] - by['gray.png']).abs().max() <= 1                    # 65535 ↔ 255, rounding only
    assert (by['palette.png'] - by['rgb.png']).abs().float().mean() < 12            # 64 colours, close to the photo
    assert (by['corner.png'][:, :6, :6] == 255).all()                               # transparent corner: white
    assert torch.equal(by['corner.png'][:, 10:, 10:], by['rgb.png'][:, 10:, 10:])   # opaque part: the photo
