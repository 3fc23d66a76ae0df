"""A run's actors on a real local Ray: an error raised in an actor's __init__ reaches the caller as
itself, long before the start-up timeout, and leaves no actor behind."""

import time

import pytest

from stream_monitor.config import load_config
from stream_monitor.runtime.start import start_workers
from tests.conftest import RAY_START_TIMEOUT_S, RAY_TEST_TIMEOUT_S

pytestmark = pytest.mark.timeout(RAY_TEST_TIMEOUT_S)


def test_an_error_in_a_stream_actors_init_reaches_the_caller_as_itself_at_once(ray_local):
    # past the CLI's path check, as a folder removed after it would be; EATA's adapter takes its
    # Fisher images from that stream actor, so it dies of the same error
    config = load_config(None, ["source.kind=imagefolder", "source.data=/nonexistent/folder", "adapter.name=eata",
                                "probe.enabled=false", "runtime.threads=1",
                                f"runtime.start_timeout_s={RAY_START_TIMEOUT_S}"])
    started = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"^Image folder '/nonexistent/folder' does not exist\. Pass a folder") \
            as caught:
        start_workers(config, run_id="broken")
    seconds = time.monotonic() - started
    print(f"the error arrived after {seconds:.1f} s")
    assert seconds < RAY_START_TIMEOUT_S / 4
    assert "(raised in the Ray actor stream-0 while it started)" in caught.value.__notes__
    for name in ("stream-0", "adapter"):
        with pytest.raises(ValueError, match="Failed to look up actor"):
            ray_local.get_actor(f"broken/{name}")  # killed, not left to Ray's restarts


def test_actors_that_cannot_be_placed_time_out_with_the_advice_to_raise_the_limit(ray_local):
    from stream_monitor.runtime.actors import RayStartError

    config = load_config(None, ["runtime.num_gpus=1", "probe.enabled=false", "runtime.start_timeout_s=3"])
    with pytest.raises(RayStartError, match=r"the Ray actors (stream-0, )?adapter did not start within "
                                            r"runtime\.start_timeout_s = 3 s\. On a busy machine give them longer, "
                                            r"e\.g\. --set runtime\.start_timeout_s=600\. They ask for GPUs "
                                            r"\(adapter 1\) and the cluster has 0"):
        start_workers(config, run_id="no-gpu")
