import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import iclevr.render.dataset
from iclevr.labels import COURSE_TEST, COURSE_TRAIN_LABELS
from iclevr.render.dataset import MIN_VISIBLE_PIXELS, plan_random_scenes
from iclevr.render.look import (
    CLEVR_CAMERA,
    CLEVR_CAMERA_JITTER,
    CLEVR_LAMP_JITTER,
    CLEVR_LAMPS,
    ICLEVR,
    LEGACY,
)
from iclevr.render.raycast import ground_axes, render, srgb_encode, visible_pixels
from iclevr.render.scenes import CLEVR_RGB, SceneObject
from pipeline_iclevr import LABELS
from render_iclevr import main


def _objects(records):
    return [SceneObject(**record) for record in records]


def test_layout_and_json(rendered_dir, rendered_scenes, rendered_views):
    train = json.loads((rendered_dir / "train.json").read_text())
    assert json.loads((rendered_dir / "objects.json").read_text()) == {name: i for i, name in enumerate(LABELS)}
    pngs = {p.name for p in rendered_dir.glob("*.png")}
    assert pngs == set(train) == set(rendered_scenes) and len(pngs) == 24
    for scene in range(8):
        sequence = [train[f"CLEVR_train_{scene:06d}_{k}.png"] for k in range(3)]
        assert [len(labels) for labels in sequence] == [1, 2, 3]
        assert sequence[0] == sequence[2][:1] and sequence[1] == sequence[2][:2]  # one object added per step
        assert len(set(sequence[2])) == 3
        layouts = [rendered_scenes[f"CLEVR_train_{scene:06d}_{k}.png"] for k in range(3)]
        assert layouts[0] == layouts[2][:1] and layouts[1] == layouts[2][:2]  # same layout across the sequence
        views = {rendered_views[f"CLEVR_train_{scene:06d}_{k}.png"] for k in range(3)}
        assert len(views) == 1  # one camera and lamps per scene, as GeNeVA added objects to one scene
    for name, labels in train.items():
        assert re.fullmatch(r"CLEVR_train_\d{6}_[012]\.png", name)
        assert [f"{o['color']} {o['shape']}" for o in rendered_scenes[name]] == labels
        with Image.open(rendered_dir / name) as image:
            assert image.mode == "RGB" and image.size == (64, 64)


def test_every_object_visible_and_nothing_unlabelled(rendered_dir, rendered_scenes, rendered_views):
    for name, records in rendered_scenes.items():
        objects, view = _objects(records), rendered_views[name]
        assert min(visible_pixels(objects, view=view)) >= MIN_VISIBLE_PIXELS, name
        out = render(objects, 64, 64, spp=4, view=view)
        saved = np.asarray(Image.open(rendered_dir / name)).astype(int)
        assert np.array_equal(saved, (out.image * 255).round().numpy().astype(int)), "masks re-render the saved image"
        assert out.coverage.shape[0] == len(records) and (out.coverage.flatten(1).sum(1) > 0).all()
        # Pixels no object touches show only the floor, tinted no more than the empty floor is by the warm and cool
        # lamps (shadows lose the warm key and keep the cool fill: a few levels): no unlabelled coloured object anywhere.
        background = (out.coverage.sum(0) == 0).numpy()
        floor = (render([], 64, 64, spp=1, view=view).image * 255).round().numpy().astype(int)
        spread, floor_spread = saved.max(-1) - saved.min(-1), floor.max(-1) - floor.min(-1)
        assert background.mean() > 0.5 and (spread - floor_spread)[background].max() <= 8, name


def test_scenes_follow_clevrs_rules(tmp_path):
    """The i-CLEVR look: rubber, large objects; the first at the centre (i-CLEVR's), the others CLEVR's 0.4 apart
    along the camera's ground axes, each keeping 11 visible pixels; camera and lamps jittered within CLEVR's ranges,
    once per scene; the saved view re-renders the saved image exactly."""
    from iclevr.render.dataset import render_dataset
    from iclevr.render.look import View

    out = tmp_path / "iclevr"
    render_dataset(out, plan_random_scenes(5, 0, set()), seed=0, width=64, height=64, spp=4, style=ICLEVR)
    scenes = json.loads((out / "scenes.json").read_text())
    views = {name: View.from_dict(view) for name, view in json.loads((out / "views.json").read_text()).items()}
    cameras = set()
    for name, records in scenes.items():
        objects, view = _objects(records), views[name]
        assert all(o.material == "rubber" and o.size == "iclevr" for o in objects)
        assert (objects[0].x, objects[0].y) == (0.0, 0.0) and all((o.x, o.y) != (0.0, 0.0) for o in objects[1:])
        assert all(abs(c - b) <= CLEVR_CAMERA_JITTER for c, b in zip(view.camera, CLEVR_CAMERA))
        assert all(abs(v - b) <= CLEVR_LAMP_JITTER for lamp, (base, *_) in zip(view.lamps, CLEVR_LAMPS) for v, b in zip(lamp, base))
        axes = ground_axes(view)
        for i, a in enumerate(objects):
            for b in objects[:i]:
                assert all(abs((a.x - b.x) * ax + (a.y - b.y) * ay) >= 0.4 for ax, ay in axes), name
        assert min(visible_pixels(objects, view=view, style=ICLEVR)) >= ICLEVR.min_visible_pixels == 11
        saved = np.asarray(Image.open(out / name)).astype(int)
        again = (render(objects, 64, 64, spp=4, view=view, style=ICLEVR).image * 255).round().numpy().astype(int)
        assert np.array_equal(saved, again), name
        cameras.add(view.camera)
    assert len(cameras) == 5  # one view per scene


def test_srgb_encoding():
    linear = torch.tensor([0.0, 0.002, 0.0031308, 0.2140, 0.5, 1.0])
    expected = torch.tensor([0.0, 0.02584, 0.04045, 0.5, 0.7354, 1.0])
    assert torch.allclose(srgb_encode(linear), expected, atol=2e-4)


def test_same_seed_is_byte_identical(tmp_path):
    args = ["--num_scenes", "3", "--width", "48", "--height", "36", "--seed", "7"]
    main(["--output_dir", str(tmp_path / "a"), "--num_workers", "1", *args])
    main(["--output_dir", str(tmp_path / "b"), "--num_workers", "2", *args])
    main(["--output_dir", str(tmp_path / "c"), "--num_workers", "1", *args[:-1], "8"])
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "train.json").read_bytes() != (tmp_path / "c" / "train.json").read_bytes()


def _single(label, size="large", material="rubber", x=0.0, y=0.0):
    color, shape = label.split()
    return SceneObject(color, shape, size, material, x, y, 0.4)


def _angle(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return math.degrees(math.acos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1)))


def _displayed(style, color):
    """The colour a lit CLEVR colour shows: as is (legacy), or its linear value encoded as sRGB (i-CLEVR)."""
    rgb = torch.tensor(CLEVR_RGB[color], dtype=torch.float32) / 255
    return (srgb_encode(rgb) if style is ICLEVR else rgb).numpy() * 255


@pytest.mark.parametrize("style, material", [(ICLEVR, "rubber"), (ICLEVR, "metal"), (LEGACY, "rubber"), (LEGACY, "metal")])
def test_object_colours_match_clevr(style, material):
    for label in LABELS:
        out = render([_single(label, material=material)], 64, 64, spp=2, style=style)
        inside = out.coverage[0] == 1
        median = (out.image[inside] * 255).median(0).values.numpy()
        color = label.split()[0]
        nearest = min(CLEVR_RGB, key=lambda name: _angle(median, _displayed(style, name)) + (name == "gray") * 1e-3)
        assert nearest == color, (label, material, median)
        if material == "rubber":  # lit rubber keeps the colour's hue, a little darker or brighter
            ratio = np.linalg.norm(median) / np.linalg.norm(_displayed(style, color))
            assert 0.55 < ratio < 1.25 and _angle(median, _displayed(style, color)) < 8, (label, median, ratio)


@pytest.mark.parametrize("style, size, low, high", [(ICLEVR, "iclevr", 7, 11), (LEGACY, "large", 10, 14), (LEGACY, "small", 5, 8)])
def test_object_sizes_at_64(style, size, low, high):
    """i-CLEVR's objects are 7-11 px wide at 64x64 (median 8, measured on images of models trained on it)."""
    rng = np.random.default_rng(0)
    for shape in ("cube", "sphere", "cylinder"):
        widths, areas = [], []
        for _ in range(30):
            x, y = rng.uniform(-3, 3, 2)
            obj = SceneObject("red", shape, size, "rubber", float(x), float(y), float(rng.uniform(0, 1.5)))
            mask = render([obj], 64, 64, spp=4, style=style).coverage[0] > 0.5
            columns, rows = mask.any(0).nonzero().flatten(), mask.any(1).nonzero().flatten()
            if len(columns) and columns.min() > 0 and columns.max() < 63 and rows.min() > 0 and rows.max() < 63:
                widths.append(int(columns.max() - columns.min() + 1))  # objects not cut by the frame
                areas.append(int(mask.sum()))
        assert low <= np.median(widths) <= high, (shape, size, widths)
        assert min(areas) >= 12, (shape, size, areas)  # never a speck, even at the far edge


def test_iclevr_proportions_match_the_panel_at_the_centre():
    """i-CLEVR's proportions, inferred from the panel's objects at the centre of the frame (median areas at 64x64:
    sphere 58, cylinder 100, cube 116 px): every shape 0.6 in half height and half width, the cube not shrunk by
    CLEVR's sqrt(2), so a cube covers about twice a sphere's pixels; CLEVR's proportions (the legacy component) do not."""
    def areas(style, size):
        return {shape: np.median([int((render([SceneObject("red", shape, size, "rubber", 0.0, 0.0, yaw)], 64, 64, spp=4,
                                                      style=style).coverage[0] > 0.5).sum()) for yaw in (0.0, 0.4, 0.8)])
                for shape in ("sphere", "cylinder", "cube")}

    iclevr = areas(ICLEVR, "iclevr")
    assert 50 <= iclevr["sphere"] <= 70 and 80 <= iclevr["cylinder"] <= 115 and 100 <= iclevr["cube"] <= 135, iclevr
    assert iclevr["cube"] / iclevr["sphere"] >= 1.6
    clevr = areas(ICLEVR.with_legacy(["proportions"]), "large")
    assert clevr["cube"] < clevr["sphere"] < clevr["cylinder"], clevr  # CLEVR's: the cube the smallest


@pytest.mark.parametrize("style, receiver_xy", [(ICLEVR, (-1.5, 0.75)), (LEGACY, (1.4, 1.9))])
def test_shadows_fall_on_ground_and_objects(style, receiver_xy):
    """The key light's shadow: i-CLEVR's key lamp is right of the camera, the legacy key light on its left."""
    occluder, receiver = _single("red cylinder", x=0.0, y=0.0), _single("blue cube", x=receiver_xy[0], y=receiver_xy[1])
    alone = render([receiver], 64, 64, spp=2, style=style)
    both = render([occluder, receiver], 64, 64, spp=2, style=style)
    lit_receiver = (alone.coverage[0] == 1) & (both.coverage[1] == 1)
    assert (both.image[lit_receiver].sum(-1) < alone.image[lit_receiver].sum(-1) - 0.05).any()  # shadow on the cube
    floor = render([], 64, 64, spp=2, style=style).image
    ground = (both.coverage.sum(0) == 0)
    assert (both.image[ground].sum(-1) < floor[ground].sum(-1) - 0.1).sum() > 20  # shadow on the ground


def test_exclusions_are_never_rendered():
    excluded = {frozenset({"red sphere"}), frozenset({"gray cube", "blue cube"})}
    jobs = plan_random_scenes(400, seed=1, excluded=excluded)
    seen = {frozenset(job.labels[:n]) for job in jobs for _, n in job.images}
    assert not seen & excluded
    assert any(job.labels[0] == "gray cube" for job in jobs)  # the rest of the vocabulary still appears


def test_exclude_json_cli(tmp_path):
    (tmp_path / "exclude.json").write_text(json.dumps([["Cyan Cube"], ["red sphere", "gray cube"]]))
    main(["--output_dir", str(tmp_path / "out"), "--num_scenes", "12", "--width", "16", "--height", "16",
          "--num_workers", "1", "--exclude_json", str(tmp_path / "exclude.json")])
    train = json.loads((tmp_path / "out" / "train.json").read_text())
    sets = {frozenset(labels) for labels in train.values()}
    assert frozenset({"cyan cube"}) not in sets and frozenset({"red sphere", "gray cube"}) not in sets


def test_labels_json_reproduces_real_label_lists(tmp_path):
    real = json.loads(COURSE_TRAIN_LABELS.read_text())
    subset = dict(list(real.items())[:9])
    (tmp_path / "labels.json").write_text(json.dumps(subset))
    main(["--output_dir", str(tmp_path / "out"), "--labels_json", str(tmp_path / "labels.json"),
          "--width", "32", "--height", "24", "--num_workers", "1"])
    assert json.loads((tmp_path / "out" / "train.json").read_text()) == subset
    scenes = json.loads((tmp_path / "out" / "scenes.json").read_text())
    for name in subset:
        k = int(name.rsplit("_", 1)[1][0])
        if k:
            previous = name[: -len("_0.png")] + f"_{k - 1}.png"
            assert scenes[name][:k] == scenes[previous]


def test_conditions_json_renders_reference_images(tmp_path):
    conditions = json.loads(COURSE_TEST.read_text())[:5]
    (tmp_path / "test.json").write_text(json.dumps(conditions))
    main(["--output_dir", str(tmp_path / "ref"), "--conditions_json", str(tmp_path / "test.json"),
          "--width", "64", "--height", "64", "--num_workers", "1"])
    assert sorted(p.name for p in (tmp_path / "ref").glob("*.png")) == [f"{i}.png" for i in range(5)]
    assert json.loads((tmp_path / "ref" / "conditions.json").read_text()) == conditions


def test_preview_contact_sheet(tmp_path):
    main(["--output_dir", str(tmp_path / "p"), "--num_scenes", "11", "--width", "32", "--height", "24",
          "--num_workers", "1", "--preview"])
    with Image.open(tmp_path / "p" / "preview.png") as sheet:
        # 32 of the 33 images, 8 a row, enlarged to 160x120, with up to 3 label lines (12 px each) under each
        assert sheet.size == (8 * 160, 4 * (120 + 3 * 12))
        assert sheet.getpixel((5, 120 + 2)) == (255, 255, 255) and len(np.unique(np.asarray(sheet.crop((0, 0, 160, 120))).reshape(-1, 3), axis=0)) > 10


def test_refuses_to_overwrite_and_replaces_atomically(tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = ["--output_dir", str(out), "--num_scenes", "2", "--width", "16", "--height", "16", "--num_workers", "1"]
    main(args)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(args)

    def interrupted(jobs, out_dir, *rest):
        Image.new("RGB", (16, 16)).save(Path(out_dir) / jobs[0].images[0][0])
        raise KeyboardInterrupt

    monkeypatch.setattr(iclevr.render.dataset, "render_jobs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--overwrite", "--seed", "5"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old dataset is untouched
    with pytest.raises(KeyboardInterrupt):
        main([*args[:1], str(tmp_path / "fresh"), *args[2:]])
    # nothing half-written left behind (the writers' lock files stay, empty of data: a lock is the OS's, not the file's)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".writing.lock")) == ["out"]
    monkeypatch.undo()
    main([*args, "--overwrite", "--seed", "5"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} != before


@pytest.mark.parametrize("flags, message", [
    (["--width", "4"], "at least 8"),
    (["--num_scenes", "0"], "argument --num_scenes: expected a positive integer"),
    (["--labels_json", "a", "--conditions_json", "b"], "exclusive"),
])
def test_bad_flags(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        main(["--output_dir", str(tmp_path / "x"), *flags])
    assert message in capsys.readouterr().err


def test_bad_label_files(tmp_path):
    (tmp_path / "exclude.json").write_text(json.dumps([["red sphere", "pink cube"]]))
    with pytest.raises(ValueError, match="pink cube"):
        main(["--output_dir", str(tmp_path / "x"), "--exclude_json", str(tmp_path / "exclude.json")])
    assert not (tmp_path / "x").exists()


def test_condition_sets_are_the_generator_output():
    """conditions/*.json are exactly iclevr.render.scenes.sample_condition_set's output (reproducible, never hand-edited)."""
    from iclevr.render.scenes import sample_condition_set

    folder = COURSE_TEST.parent
    expected = {"synthetic_test.json": sample_condition_set(2026, [1] * 6 + [2] * 12 + [3] * 14),
                "synthetic_96.json": sample_condition_set(2027, [1] * 32 + [2] * 32 + [3] * 32),
                "synthetic_256.json": sample_condition_set(2028, [1] * 48 + [2] * 96 + [3] * 112)}
    for name, conditions in expected.items():
        assert json.loads((folder / name).read_text()) == conditions, name


def test_the_centre_object_is_measured_by_its_label_and_skipped_where_ambiguous():
    """The measure that set the proportions: a rendered object at the origin is found at the centre spot and named
    by its hue; a grey object, a colour two labels share, and an empty centre give nothing."""
    from iclevr.render.measure import centre_areas, centre_object

    def picture(*objects):
        return (render(list(objects), 64, 64, spp=4, style=ICLEVR).image * 255).round().to(torch.uint8).numpy()

    sphere, cube = _single("blue sphere", size="iclevr"), _single("red cube", size="iclevr")
    shape, area = centre_object(picture(sphere), ["blue sphere"])
    assert shape == "sphere" and 50 <= area <= 70, area  # the sphere's 60 covered pixels, give or take its dark rim
    assert centre_object(picture(cube), ["green sphere", "red cube"])[0] == "cube"
    assert centre_object(picture(_single("gray cube", size="iclevr")), ["gray cube"]) is None
    assert centre_object(picture(cube), ["red cube", "red sphere"]) is None
    assert centre_object(picture(_single("red cube", size="iclevr", x=2.5, y=-2.5)), ["red cube"]) is None
    table = centre_areas([(picture(sphere), ["blue sphere"]), (picture(cube), ["red cube"])])
    assert table["sphere"]["objects"] == table["cube"]["objects"] == 1 and table["cube"]["median_area"] > 1.6 * table["sphere"]["median_area"]


def test_a_style_is_named_by_what_it_reverts():
    """Cache folders are named by the look, so a set rendered in one look is never reused for another."""
    assert (ICLEVR.name, LEGACY.name) == ("iclevr", "legacy")
    assert ICLEVR.with_legacy(["floor", "proportions"]).name == "iclevr-legacy-floor-proportions"
