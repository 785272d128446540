"""face_diffusion.faces: the synthetic faces stay bit for bit what they were, and their attribute table is usable."""
import ast, hashlib, inspect

import pytest
import torch

import face_diffusion.data as data
import face_diffusion.faces as faces
from face_diffusion.faces import ATTRIBUTE_PROBS, ATTRIBUTES, SyntheticFaces, describe_face, synthetic_faces

# SHA-256 of the images' bytes and of the attribute codes (int64, little-endian, in the order of ATTRIBUTES),
# recorded from the renderer before it was split into painters. The bundled model's quality figures, the CPU
# recipe and many tests are measured on these faces: a change here changes them all. The same hashes came out
# with torch's scalar, AVX2 and AVX-512 kernels (ATEN_CPU_CAPABILITY=default/avx2/avx512).
FACE_HASHES = {
    (64, 16, 0): ('16cad5c713c3c6176c5358c38d51bf3f5437ad7537744785fb4d4098f853f093',
                  'e34a7e483b0471fa58c89141a8585d0d8004b567af17c18491438cd8b141f059'),
    (64, 32, 1): ('fb53be7252a0ee0e4d85369c6a1c309965afc874eaf93b15b0033446641cc660',
                  'a5e40de3141a6fe267944abb5bdd8a8fec526b913ab57ca800ca83453173cc61'),
    (32, 64, 2): ('2b2bec0512632d1c96a9ad0cf400e6da0a969ec3bdd2cb7d8f015417532c94d1',
                  '7d1b1d03935622284aaa47f604afe1264b616954ccc2362560c2fb7d90869939'),
    (8, 128, 3): ('a1ddf7aaf565ea20bf0a93d7a820e8a8978dff16e492e917720af627e6e5e845',
                  '5ee03e47991181a5cc6f494bb405189a9e11e900356f800751b92662c430f581'),
    (300, 32, 4): ('145d67979e2570cbbf3c83dd9f51bffa9a57d84647fb1b7ab25b889b5af984de',   # two batches, two threads
                   '86e321f844cb332428c5d4544883e56a07c593dac1b9c9d56a36a309a5eca020'),
}


def hashes(images, attributes):
    codes = b''.join(attributes[name].numpy().astype('<i8').tobytes() for name in ATTRIBUTES)
    return hashlib.sha256(images.numpy().tobytes()).hexdigest(), hashlib.sha256(codes).hexdigest()


@pytest.mark.parametrize('n,size,seed', list(FACE_HASHES))
def test_faces_bit_identical(n, size, seed):
    images, attributes = synthetic_faces(n, size, seed)
    assert images.shape == (n, 3, size, size) and images.dtype == torch.uint8
    assert hashes(images, attributes) == FACE_HASHES[n, size, seed]


def test_attribute_table():
    assert list(ATTRIBUTES) == ['skin', 'face_shape', 'hair_style', 'hair_color', 'eye_color', 'eyebrows', 'mouth',
                                'glasses', 'background']
    assert ATTRIBUTES['glasses'] == ['none', 'round', 'square', 'sunglasses']
    for name, categories in ATTRIBUTES.items():
        assert len(set(categories)) == len(categories) == len(ATTRIBUTE_PROBS[name])
        assert abs(sum(ATTRIBUTE_PROBS[name]) - 1) < 1e-9
    images, attributes = synthetic_faces(6, 16, seed=0)
    assert list(attributes) == list(ATTRIBUTES)                                # the table's order
    for i in range(6):
        described = describe_face(attributes, i)
        assert list(described) == list(ATTRIBUTES)
        assert all(described[name] == ATTRIBUTES[name][attributes[name][i]] for name in ATTRIBUTES)
    assert describe_face({'mouth': torch.tensor([3])}, 0) == {'mouth': 'frown'}   # a part of the table is fine


def test_data_reexports_the_faces():
    "Callers import the faces from face_diffusion.data: the very same objects."
    for name in ['synthetic_faces', 'SyntheticFaces', 'ATTRIBUTES', 'ATTRIBUTE_PROBS', 'describe_face']:
        assert getattr(data, name) is getattr(faces, name) and name in data.__all__
    ds = SyntheticFaces(3, size=16, seed=5)
    assert torch.equal(ds.images, synthetic_faces(3, 16, 5)[0]) and len(ds) == 3


def test_no_long_functions_in_the_renderer():
    "One small painter per feature: no function of faces.py is over 60 lines, and none is nested in another."
    tree = ast.parse(inspect.getsource(faces))
    functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
    too_long = [f.name for f in functions if f.end_lineno - f.lineno + 1 > 60]
    nested = [g.name for f in functions for g in ast.walk(f) if isinstance(g, ast.FunctionDef) and g is not f]
    assert not too_long and not nested, (too_long, nested)
    painters = [p.__name__ for p in faces._PAINTERS]
    assert painters == ['_hair_behind', '_neck', '_shirt', '_ears', '_face', '_cheeks', '_nose', '_hair_on_top',
                        '_eyes', '_eyebrows', '_mouth', '_glasses']


def test_face_description_uses_53_of_the_random_columns():
    "The appendix says 53 of the 64 columns are used: 53 are enough, 52 are not; the rest are free for new parameters."
    U = torch.rand(4, faces._N_UNIFORMS, generator=torch.Generator().manual_seed(0))
    assert faces._N_UNIFORMS == 64
    full, first53 = faces._face_params(U), faces._face_params(U[:, :53])
    assert all(torch.equal(full[k], first53[k]) for k in full)
    with pytest.raises(StopIteration): faces._face_params(U[:, :52])


def test_every_attribute_changes_the_picture():
    "A painter that ignored an attribute's codes would pass the frequency checks; each category must look different."
    P = faces._face_params(torch.rand(1, faces._N_UNIFORMS, generator=torch.Generator().manual_seed(11)))
    for name, categories in ATTRIBUTES.items():
        k = len(categories)
        one = {key: val.repeat(k, *[1] * (val.ndim - 1)) for key, val in P.items()} | {name: torch.arange(k)}
        im = (faces._render_faces(one, 64) * 255).round()
        for i in range(k):
            for j in range(i + 1, k):
                assert ((im[i] - im[j]).abs() > 8).sum() >= 20, (name, categories[i], categories[j])


def test_coverage_is_exact_for_a_straight_edge():
    "c = clamp(½ − d/w, 0, 1): along a row the coverages times w add up to the covered length (d = x − x_e)."
    for n_px in [16, 33]:
        w = 2 / n_px
        x = (torch.arange(n_px, dtype=torch.float64) + 0.5) * w - 1
        for x_e in [-0.61, -0.2, 0.0, 0.33, 0.8]:
            assert abs((faces._cover(x - x_e, w).sum() * w).item() - (x_e + 1)) < 1e-9
