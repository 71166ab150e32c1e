"""One seeding scheme for the Multiplexer and every track: ``(seed, track, stream)`` -> generator.

A random draw belongs to a named *track* (``"sgrna"``, ``"multiplexer"``, ...) and a named
*stream* inside it (``"split"``, ``"simulate"``, ``"init"``, ``"train"``, ...). Each name is turned
into a number by CRC-32 of its text (stable across Python runs and machines, unlike ``hash``), and
the three numbers seed numpy's ``SeedSequence``: streams are independent of each other, and adding
a stream never changes the draws of another.
"""

import zlib

import numpy as np


def name_key(name):
    """The stable integer of a track or stream name (CRC-32 of its UTF-8 text)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a track or stream name must be a non-empty string, not {name!r}")
    return zlib.crc32(name.encode())


def entropy(seed, track, stream):
    """The ``SeedSequence`` entropy ``[seed, key(track), key(stream)]`` of one stream."""
    return [int(seed), name_key(track), name_key(stream)]


def rng(seed, track, stream):
    """A ``numpy.random.Generator`` of one named stream."""
    return np.random.default_rng(entropy(seed, track, stream))


def int_seed(seed, track, stream, bits=63):
    """One integer in ``[0, 2**bits)`` of the stream: for a library that takes an int
    (``torch.manual_seed``, scikit-learn's ``random_state`` with ``bits=31``)."""
    return int(rng(seed, track, stream).integers(2 ** bits))


def torch_generator(seed, track, stream, device="cpu"):
    """A ``torch.Generator`` on ``device`` seeded from the stream."""
    import torch

    return torch.Generator(device=device).manual_seed(int_seed(seed, track, stream))


def torch_seeded(seed, track, stream):
    """A context manager: torch's global RNG seeded from the stream inside, restored after (for
    layers that initialise from the global RNG, e.g. ``nn.Linear``)."""
    import torch

    class _Seeded:
        def __enter__(self):
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            torch.manual_seed(int_seed(seed, track, stream))
            return self

        def __exit__(self, *exc):
            return self._fork.__exit__(*exc)

    return _Seeded()
