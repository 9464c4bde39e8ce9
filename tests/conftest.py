import json
import threading
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "iclevr"


def shared_file(name: str) -> Path:
    """A file of ../shared/iclevr, or a clean skip where the checkout has no shared/ beside it."""
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    return path


def run_side_by_side(work, count: int = 2, timeout: float = 300) -> list:
    """``work()`` in ``count`` threads released together (two runs or jobs started at once on one cache); returns
    what each returned, and raises the first error any of them raised."""
    start, results, errors = threading.Barrier(count), [], []

    def run():
        start.wait()
        try:
            results.append(work())
        except Exception as error:  # re-raised in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if errors:
        raise errors[0]
    return results


@pytest.fixture(scope="session")
def rendered_dir(tmp_path_factory) -> Path:
    """A small procedural i-CLEVR dataset (8 scenes, 24 images at 64x64) in the course's layout."""
    from render_iclevr import main

    out = tmp_path_factory.mktemp("render") / "iclevr"
    main(["--output_dir", str(out), "--num_scenes", "8", "--width", "64", "--height", "64", "--num_workers", "1"])
    return out


@pytest.fixture(scope="session")
def rendered_scenes(rendered_dir) -> dict:
    return json.loads((rendered_dir / "scenes.json").read_text())
