import os
from pathlib import Path

import pytest

# Must be set before torch loads OpenMP: spinning worker threads make small CPU ops 20-30x slower
# on a shared machine (measured: the accuracy-matrix test took 320 s instead of 20 s under load).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

INTEGRATION = Path(__file__).resolve().parent / "integration"

#: Limits of the Ray tests, generous because the machine may be busy; raise them there, not in the tests.
RAY_TEST_TIMEOUT_S = float(os.environ.get("RAY_TEST_TIMEOUT_S", "900"))   # one test, start to end
RAY_START_TIMEOUT_S = float(os.environ.get("RAY_START_TIMEOUT_S", "600"))  # a run's runtime.start_timeout_s


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the marks added here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every integration test starts a real Ray (`ray`), and a Ray test is a `slow` one: `-m "not slow"`
    is the fast lane without a marker in each integration module to forget."""
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.ray)
        if item.get_closest_marker("ray") is not None:
            item.add_marker(pytest.mark.slow)


def write_glyph_folder(root, images: int = 40, start: int = 0):
    """An ImageFolder of rendered glyphs (`<root>/<digit>/<i>.png`, 32 px) for the embedded model:
    a user's own image folder, as tests can make one."""
    from PIL import Image

    from stream_monitor.sources.glyphs import VAL, GlyphDomain

    root = Path(root)
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
    glyphs, labels = GlyphDomain().render_range(VAL.start + start, VAL.start + start + images)
    for i, (image, label) in enumerate(zip(glyphs, labels)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / str(int(label)) / f"{i:05d}.png")
    return root
