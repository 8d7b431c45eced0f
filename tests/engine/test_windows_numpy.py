"""The window ops on NumPy (where the max pool's gradient takes its own path: each tap
compared once, non-overlapping windows written in place) give what the tap loops give on
another backend (array-api-strict, the standard's calls only), for every kind of window:
padding, stride, dilation, overlapping and non-overlapping pools, odd sizes that leave a
margin unread, and ties."""

from __future__ import annotations

import array_api_strict as xs
import numpy as np
import pytest

from service.engine.ops import windows as W

R = np.random.default_rng(11)

CONVS = [  # input shape, weight shape, stride, padding, dilation
    ((2, 1, 5, 5), (1, 1, 3, 3), 1, 0, 1),
    ((2, 3, 7, 6), (4, 3, 3, 2), 1, 1, 1),
    ((1, 2, 9, 8), (3, 2, 3, 3), 2, (1, 0, 2, 1), 1),
    ((3, 2, 8, 9), (2, 2, 2, 3), (2, 3), 2, (2, 1)),
    ((2, 1, 4, 4), (1, 1, 1, 1), 3, 0, 1),
]
POOLS = [  # input shape, kernel, stride, padding
    ((2, 3, 8, 8), 2, None, 0),  # non-overlapping, exact tiles
    ((2, 2, 7, 9), 2, None, 0),  # non-overlapping, a margin unread
    ((1, 2, 7, 7), 3, 1, 0),  # overlapping
    ((2, 1, 9, 8), (3, 2), (2, 1), 0),
    ((2, 2, 6, 6), 3, 2, 1),  # padded: the tap loops on NumPy too
]


def _strict(a: np.ndarray) -> object:
    return xs.asarray(a)


def _close(got: np.ndarray, want: object) -> None:
    want = np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("x, w, stride, padding, dilation", CONVS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_is_the_tap_loop(x: tuple, w: tuple, stride: object, padding: object,
                                dilation: object, dtype: type) -> None:
    win = W.conv_window(x, w, stride, padding, dilation)
    a = R.standard_normal(x).astype(dtype)
    got = W.im2col(np, a, win)
    _close(got, W.im2col(xs, _strict(a), win))
    assert got.flags.c_contiguous and got.flags.writeable  # its own copy, not a view
    assert not np.shares_memory(got, a)


def _tied(shape: tuple, dtype: type) -> np.ndarray:
    return R.integers(-2, 3, shape).astype(dtype)  # few values: many ties in a window


@pytest.mark.parametrize("x, kernel, stride, padding", POOLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_and_its_routing_are_the_tap_loops(x: tuple, kernel: object, stride: object,
                                                     padding: object, dtype: type) -> None:
    win = W.pool_window(x, kernel, stride, padding)
    a = _tied(x, dtype)
    top = W.window_max(np, a, win)
    _close(top, W.window_max(xs, _strict(a), win))
    g = R.standard_normal(top.shape).astype(dtype)
    routed = W.max_route(np, a, g, win)
    _close(routed, W.max_route(xs, _strict(a), _strict(g), win))
    # every window hands its whole g to its maxima, split evenly on ties
    np.testing.assert_allclose(routed.sum(), g.sum(), rtol=1e-5)


def test_an_empty_batch_pools_to_nothing() -> None:
    win = W.pool_window((0, 2, 4, 4), 2)
    a = np.zeros((0, 2, 4, 4), np.float32)
    assert W.window_max(np, a, win).shape == (0, 2, 2, 2)
    assert W.max_route(np, a, np.zeros((0, 2, 2, 2), np.float32), win).shape == a.shape
