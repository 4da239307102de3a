"""Figures are bytes in git: the same figure must give the same file on every run and every matplotlib version,
or re-running a notebook rewrites figures whose numbers did not change."""
import io

import pytest

from minialign.plots import save_figure


def _figure(plt):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [2.0, 0.5, 1.0], label="a line")
    ax.set(title="a figure", xlabel="x", ylabel="y")
    ax.legend()
    return fig


def _bytes(fig, save, fmt):
    buf = io.BytesIO()
    save(fig, buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def plt():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def _saved_under_two_versions(plt, monkeypatch, save, fmt):
    """The same figure saved twice, as if by two matplotlib versions at two dates."""
    import matplotlib

    fig = _figure(plt)
    monkeypatch.setattr(matplotlib, "__version__", "3.0.0")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    first = _bytes(fig, save, fmt)
    monkeypatch.setattr(matplotlib, "__version__", "9.9.9")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1000000000")
    return first, _bytes(fig, save, fmt)


@pytest.mark.parametrize("fmt", ["png", "pdf"])
def test_saving_the_same_figure_twice_gives_identical_bytes(plt, monkeypatch, fmt):
    first, second = _saved_under_two_versions(plt, monkeypatch, save_figure, fmt)
    assert first == second
    assert b"Matplotlib" not in first and b"matplotlib" not in first


def test_plain_savefig_differs_between_versions_so_the_check_can_fail(plt, monkeypatch):
    """Without the fixed metadata the version string lands in the PNG: the test above would catch it."""
    def plain(fig, buf, format):
        fig.savefig(buf, format=format)

    first, second = _saved_under_two_versions(plt, monkeypatch, plain, "png")
    assert first != second


def test_save_figure_keeps_metadata_the_caller_asks_for(plt):
    fig = _figure(plt)
    data = _bytes(fig, lambda f, b, format: save_figure(f, b, format=format, metadata={"Title": "kept"}), "png")
    assert b"Title" in data and b"kept" in data
