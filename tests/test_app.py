"""The demo page (app.py), used as a person would: a real headless Chromium on a served page."""

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from pipeline_iclevr import ICLEVRPipeline

from .test_pipeline import tiny_unet

ROOT = Path(__file__).resolve().parents[1]
gradio = pytest.importorskip("gradio", reason="the demo needs gradio (requirements-dev.txt installs it)")


def require(found: bool, what: str) -> None:
    """Skip without ``what`` on a developer's machine; fail in CI (``CI`` set), where .ci/run installs it."""
    if not found:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"needs {what} (.ci/run installs it)")


def tiny_pipeline(folder: Path) -> Path:
    """A small untrained pipeline drawing 16x16 images through an 8x8 UNet (patch size 2)."""
    unet = tiny_unet(sample_size=8, in_channels=12, out_channels=12)
    ICLEVRPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100), patch_size=2).save_pretrained(folder)
    return folder


def test_conditions_are_read_object_by_object():
    from app import NONE, read_condition

    assert read_condition([("red", "sphere"), (NONE, NONE), ("cyan", "cube")]) == ["red sphere", "cyan cube"]
    with pytest.raises(gradio.Error, match="empty"):
        read_condition([(NONE, NONE)] * 3)
    with pytest.raises(gradio.Error, match="red sphere is asked for twice"):
        read_condition([("red", "sphere"), ("red", "sphere"), (NONE, NONE)])
    with pytest.raises(gradio.Error, match="Object 2 has a colour but no shape"):
        read_condition([("red", "sphere"), ("blue", NONE), (NONE, NONE)])


def test_captions_mark_what_the_evaluator_misses(tmp_path):
    """With an evaluator, a caption lists its top-k reading and marks each asked-for label it did not read."""
    from app import Demo
    from iclevr.evaluator import build_evaluator, evaluator_image_processor

    evaluator = build_evaluator()
    torch.nn.init.zeros_(evaluator.classifier[-1].weight)
    with torch.no_grad():  # an evaluator that reads "gray cube" (0) and "red cube" (1) on every image
        evaluator.classifier[-1].bias.copy_(torch.linspace(1, -1, 24))
    evaluator.save_pretrained(tmp_path / "evaluator")
    evaluator_image_processor().save_pretrained(tmp_path / "evaluator")
    demo = Demo(str(tiny_pipeline(tmp_path / "pipe")), str(tmp_path / "evaluator"))
    image = demo.pipe([["red cube"]], num_inference_steps=1).images[0]
    assert demo.caption(image, ["gray cube", "red cube"]) == "read: gray cube, red cube — all read"
    assert demo.caption(image, ["gray cube", "cyan sphere"]) == "read: gray cube, red cube — missed: ✗ cyan sphere"
    summary = demo.summary([demo.caption(image, ["gray cube", "red cube"]), demo.caption(image, ["cyan sphere"])])
    assert summary.startswith("**The evaluator read every object on 1 of 2 images.**")
    assert "2. read: gray cube — missed: ✗ cyan sphere" in summary


def test_the_shipped_evaluator_captions_by_default_and_reads_in_float32(tmp_path):
    """With no main job's evaluator beside the pipeline, the page reads with the shipped one, loaded in float32 though
    its file is half precision."""
    from app import Demo, parse_args
    from iclevr.evaluator import SHIPPED_EVALUATOR

    pipeline = tiny_pipeline(tmp_path / "pipe")
    args = parse_args(["--pipeline", str(pipeline)])
    assert args.evaluator == str(SHIPPED_EVALUATOR)
    demo = Demo(str(pipeline), args.evaluator)
    assert demo.reader.model.dtype == torch.float32
    assert demo.caption(demo.pipe([["red cube"]], num_inference_steps=1).images[0], ["red cube"]).startswith("read: ")


def test_a_folder_without_a_pipeline_is_refused_before_serving(tmp_path, capsys):
    from app import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--pipeline", str(tmp_path)])
    assert "is not a saved pipeline folder (no model_index.json)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """app.py serving a tiny pipeline on a free port of 127.0.0.1 with a queue of 2; stopped after the module's tests."""
    from iclevr.demo_load import free_port, start_app

    folder = tiny_pipeline(tmp_path_factory.mktemp("app") / "pipeline")
    port = free_port()
    try:
        server = start_app(folder, port, folder.parent / "server.log", ["--max_queue", "2"])
    except RuntimeError as error:
        pytest.fail(str(error))
    yield f"http://127.0.0.1:{port}/", folder.parent
    server.terminate()
    server.wait(timeout=30)


def _inputs(seed, steps=2, images=1):
    from app import MAX_OBJECTS, NONE
    from iclevr.demo_load import page_inputs

    return page_inputs(False, "red sphere", 1.0, steps, images, seed, MAX_OBJECTS, NONE)


@pytest.mark.parametrize("seed, message", [(10**30, "The seed must be a whole number from 0 to 9223372036854775807"),
                                           (-1, "got -1")])
def test_a_bad_seed_gets_its_own_message_on_the_page(served, seed, message):
    from iclevr.demo_load import one_request

    result = one_request(served[0], _inputs(seed))
    assert result["outcome"] == "message" and message in result["message"], result
    assert one_request(served[0], _inputs(2**63 - 1))["outcome"] == "answered"  # the largest seed works, and it still serves


def test_a_crowd_is_answered_or_told_the_page_is_busy(served):
    """Eight clients at once against a queue of two: each is answered or told to retry, none fails any other way."""
    from iclevr.demo_load import drive, summarise

    results = drive(served[0], 8, _inputs(0, steps=60, images=8), timeout=300)
    summary = summarise(results)
    assert summary["failed"] == 0 and summary["message"] == 0, results
    assert summary["answered"] >= 1 and summary["answered"] + summary["busy"] == 8, summary
    assert summary["busy"] >= 1 and all("try again" in r["message"] for r in results if r["outcome"] == "busy"), summary


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through selenium (Debian's chromium and chromium-driver)."""
    require(importlib.util.find_spec("selenium") is not None, "selenium")
    require(bool(shutil.which("chromium") and shutil.which("chromedriver")), "Debian's chromium and chromium-driver")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))
    yield driver
    driver.quit()


def pick(driver, group: str, value: str) -> None:
    """Click the radio button ``value`` of the radio group with elem_id ``group``."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#{group} input[value='{value}']").click()


def set_slider(driver, elem_id: str, value: int) -> None:
    """Type a value into a slider's number box, as a person would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type='number']")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def gallery_images(driver, count: int, timeout: float = 120) -> list[list[int]]:
    """Wait until the gallery shows ``count`` loaded images; return their natural sizes. One script reads them all
    at once, so a gallery re-rendering between two reads cannot leave a stale element."""
    from selenium.webdriver.support.ui import WebDriverWait

    script = ("return Array.from(document.querySelectorAll('#gallery img'))"
              ".filter(i => i.complete && i.naturalWidth).map(i => [i.naturalWidth, i.naturalHeight]);")

    def loaded(d):
        sizes = d.execute_script(script)
        return sizes if len(sizes) == count else False

    return WebDriverWait(driver, timeout).until(loaded)


def test_the_page_generates_refuses_a_bad_condition_and_keeps_serving(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, folder = served
    browser.get(url)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#generate"))
    pick(browser, "colour-1", "cyan")
    pick(browser, "shape-1", "cube")
    pick(browser, "colour-2", "yellow")
    pick(browser, "shape-2", "cylinder")
    set_slider(browser, "steps", 2)
    set_slider(browser, "count", 3)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    sizes = gallery_images(browser, 3)
    assert {tuple(size) for size in sizes} == {(16, 16)}  # the pipeline's own size, not re-encoded or resized
    gallery = browser.find_element(By.CSS_SELECTOR, "#gallery").text  # the shipped evaluator's reading of each image
    assert "cyan cube" in gallery and "yellow cylinder" in gallery and "read:" in gallery

    browser.save_screenshot(str(folder / "page.png"))
    from PIL import Image

    shot = np.asarray(Image.open(folder / "page.png").convert("RGB").resize((64, 64)))
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50  # a drawn page with its images, not a blank one

    pick(browser, "colour-3", "cyan")  # object 3 = object 1: refused on the page
    pick(browser, "shape-3", "cube")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    WebDriverWait(browser, 60).until(lambda d: "cyan cube is asked for twice" in d.find_element(By.TAG_NAME, "body").text)

    pick(browser, "colour-3", "(none)")  # the server still answers
    pick(browser, "shape-3", "(none)")
    set_slider(browser, "count", 2)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    assert len(gallery_images(browser, 2)) == 2


def test_a_layout_model_places_the_objects_where_the_sliders_say(tmp_path, monkeypatch):
    """With "Place the objects" ticked, each object's box is centred on its (x, y) at the prior's small/large size;
    unticked, the call gives no layout and the model draws one from its prior."""
    import app

    from .test_layouts import PRIOR

    unet = tiny_unet(in_channels=3 + 24)
    ICLEVRPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100), layout_prior=PRIOR).save_pretrained(tmp_path / "p")
    demo = app.Demo(str(tmp_path / "p"))
    calls = []
    original = ICLEVRPipeline.__call__

    def recording(self, *args, **kwargs):
        calls.append(kwargs.get("layouts"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ICLEVRPipeline, "__call__", recording)
    objects = ["red", "sphere", "cyan", "cube", app.NONE, app.NONE]
    placements = [0.2, 0.7, "large", 0.8, 0.1, "small", 0.5, 0.5, "large"]
    images, _ = demo.generate(*objects, True, *placements, 2.0, 1, 2, 0, progress=lambda *a, **k: None)
    sizes = app.box_sizes(PRIOR)
    assert len(images) == 2 and calls[-1] == [[{"label": "red sphere", "box": app.centred_box(0.2, 0.7, sizes["large"])},
                                               {"label": "cyan cube", "box": app.centred_box(0.8, 0.1, sizes["small"])}]]
    box = calls[-1][0][0]["box"]
    assert box[2] - box[0] == pytest.approx(sizes["large"][0], abs=1e-3) and (box[0] + box[2]) / 2 == pytest.approx(0.2, abs=1e-3)
    assert app.centred_box(0.99, 0.0, (0.2, 0.2)) == [0.8, 0.0, 1.0, 0.2]  # moved inside the image
    demo.generate(*objects, False, *placements, 2.0, 1, 1, 0, progress=lambda *a, **k: None)
    assert calls[-1] is None


def test_with_no_pipeline_given_the_page_serves_the_shipped_one(monkeypatch):
    """A clean clone serves a trained model at once: the pipeline that ships in pretrained/iclevr-ddpm."""
    import app

    monkeypatch.delenv("ICLEVR_PIPELINE", raising=False)
    args = app.parse_args([])
    assert args.pipeline == str(app.SHIPPED_PIPELINE) and (app.SHIPPED_PIPELINE / "model_index.json").is_file()
    assert app.Demo(args.pipeline).pipe.uses_layouts
