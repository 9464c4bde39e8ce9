"""Layouts: the renderer's boxes, layouts.json, the map the UNet reads, the prior, the pipeline's layouts argument,
the trainer's mode, and the report's layout measure."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from iclevr.labels import BadDataError
from iclevr.layouts import layout_prior, read_layouts_file
from pipeline_iclevr import ICLEVRPipeline, LabelVocabulary, label_channels, layout_map, layout_tensors, sample_layout
from tests.test_pipeline import tiny_unet

ROOT = Path(__file__).resolve().parents[1]
VOCAB = LabelVocabulary()
PRIOR = {"1": [[[0.1, 0.1, 0.3, 0.3]], [[0.6, 0.5, 0.8, 0.9]]],
         "2": [[[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9]]]}


@pytest.fixture
def layout_pipe():
    pipe = ICLEVRPipeline(unet=tiny_unet(in_channels=3 + 24), scheduler=DDIMScheduler(num_train_timesteps=100), layout_prior=PRIOR)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(pipe, labels, seed=0, **kwargs):
    return pipe(labels, num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(seed), **kwargs)


# --- the renderer's boxes and layouts.json ------------------------------------------------------------------------
def test_image_box_bounds_what_the_renderer_draws():
    """Each object's box, drawn alone at 64x64 from its scene's camera, holds its rendered pixels, tight to a pixel and a half."""
    from iclevr.render.look import sample_view
    from iclevr.render.raycast import ground_axes, image_box, render
    from iclevr.render.scenes import place_objects, scene_rng

    for index in range(6):
        rng = scene_rng(3, index)
        view = sample_view(rng)  # each scene's own jittered camera: the boxes follow it
        for obj in place_objects(rng, ["red sphere", "blue cube", "green cylinder"], axes=ground_axes(view)):
            ys, xs = (render([obj], 64, 64, spp=1, view=view).coverage[0] > 0).nonzero(as_tuple=True)
            x0, y0, x1, y1 = (v * 64 for v in image_box(obj, view))
            drawn = (xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1)
            # The box is the sharp solid's; the bevel rounds a corner off by up to a little over a pixel's row.
            assert abs(x0 - drawn[0]) <= 1.5 and abs(y0 - drawn[1]) <= 1.5 and abs(x1 - drawn[2]) <= 1.5 and abs(y1 - drawn[3]) <= 1.5
            assert x0 <= drawn[0] + 1 and y0 <= drawn[1] + 1 and x1 >= drawn[2] - 1 and y1 >= drawn[3] - 1  # it holds them


def test_the_renderer_writes_a_layout_per_image(rendered_dir):
    labels = json.loads((rendered_dir / "train.json").read_text())
    layouts = json.loads((rendered_dir / "layouts.json").read_text())
    assert layouts.keys() == labels.keys()
    for name, layout in layouts.items():
        assert [item["label"] for item in layout] == labels[name]
        assert all(0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1 for b in (item["box"] for item in layout))


def test_read_layouts_file(rendered_dir, tmp_path):
    names = sorted(json.loads((rendered_dir / "train.json").read_text()))
    labels = torch.stack([VOCAB.encode(json.loads((rendered_dir / "train.json").read_text())[n]) for n in names])
    boxes, box_labels = read_layouts_file(rendered_dir, names, labels, VOCAB)
    assert boxes.shape == (len(names), 3, 4) and ((box_labels >= 0).sum(1) == labels.sum(1)).all()
    assert read_layouts_file(tmp_path, names, labels, VOCAB) is None  # no layouts.json: label-only

    data = json.loads((rendered_dir / "layouts.json").read_text())
    broken = dict(data)
    broken[names[0]] = [{"label": "red sphere", "box": [0.5, 0.5, 0.4, 0.9]}]
    del broken[names[1]]
    (tmp_path / "layouts.json").write_text(json.dumps(broken))
    with pytest.raises(BadDataError) as error:
        read_layouts_file(tmp_path, names, labels, VOCAB)
    message = str(error.value)
    assert names[0] in message and f"{names[1]}: no layout" in message and "remove it to train the label-only model" in message


# --- the map ------------------------------------------------------------------------------------------------------
def test_layout_map_paints_nearer_objects_on_top():
    red, cyan = VOCAB.index("red sphere"), VOCAB.index("cyan cube")
    boxes, box_labels = layout_tensors([[(red, [0.0, 0.0, 0.5, 0.75]), (cyan, [0.25, 0.25, 0.75, 0.5])], [(cyan, [0.9, 0.9, 0.91, 0.91])]])
    painted = layout_map(boxes, box_labels, label_channels(VOCAB), (4, 4))
    assert painted.shape == (2, 24, 4, 4) and set(painted.unique().tolist()) == {0.0, 1.0}
    assert painted.sum(1).max() == 1  # one label per cell
    # red reaches lower (y1 0.75): nearer, so it covers the overlap; cyan keeps the cells only it covers
    assert painted[0, red, :3, :2].all() and painted[0, cyan, 1, 2] == 1 and painted[0, cyan, 1, 1] == 0
    assert painted[1, cyan].sum() == 1 and painted[1, cyan, 3, 3] == 1  # a box smaller than a cell still marks one
    assert painted[0, :, 3, 3].sum() == 0  # the floor is empty


def test_a_word_map_paints_each_objects_colour_and_shape():
    words = VOCAB.words
    assert len(words) == 11 and {"red", "cyan", "sphere", "cube", "cylinder"} <= set(words)
    red, cyan = VOCAB.index("red sphere"), VOCAB.index("cyan cube")
    boxes, box_labels = layout_tensors([[(red, [0.0, 0.0, 0.5, 0.75]), (cyan, [0.25, 0.25, 0.75, 0.5])]])
    painted = layout_map(boxes, box_labels, label_channels(VOCAB, "words"), (4, 4))[0]
    channel = {word: i for i, word in enumerate(words)}
    assert painted.shape == (11, 4, 4) and painted.sum(0).max() == 2  # a colour and a shape per covered cell
    assert painted[channel["red"], :3, :2].all() and painted[channel["sphere"], :3, :2].all()
    assert painted[channel["cyan"], 1, 2] == 1 and painted[channel["cube"], 1, 2] == 1 and painted[channel["cube"], 1, 1] == 0
    assert painted[:, 3, 3].sum() == 0
    digits = LabelVocabulary({str(d): d for d in range(10)})  # one-word names: the same map either way
    assert torch.equal(label_channels(digits, "words"), label_channels(digits))
    with pytest.raises(ValueError, match="layout_channels must be one of"):
        label_channels(VOCAB, "pixels")


def test_layout_prior_keeps_the_data_as_it_is():
    boxes, box_labels = layout_tensors([[(0, [0.1 * i, 0.0, 0.1 * i + 0.05, 0.1])] for i in range(5)]
                                       + [[(0, [0.0, 0.0, 0.1, 0.1]), (1, [0.5, 0.5, 0.6, 0.6])]])
    prior = layout_prior(boxes, box_labels, size=3, seed=0)
    assert sorted(prior) == ["1", "2"] and len(prior["1"]) == 3 and len(prior["2"]) == 1
    assert prior == layout_prior(boxes, box_labels, size=3, seed=0)
    everything = layout_prior(boxes, box_labels, size=100, seed=1)["1"]
    assert sorted(layout[0][0] for layout in everything) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])  # nothing filtered


def test_sample_layout_assigns_the_labels_to_one_training_layout():
    seen = set()
    for seed in range(20):
        placed = sample_layout(PRIOR, [3, 7], torch.Generator().manual_seed(seed))
        assert sorted(i for i, _ in placed) == [3, 7] and sorted(b for _, b in placed) == sorted(PRIOR["2"][0])
        seen.add(tuple(i for i, _ in placed))
    assert seen == {(3, 7), (7, 3)}  # labels go to the boxes in either order
    more = sample_layout(PRIOR, [1, 2, 3], torch.Generator().manual_seed(0))  # more labels than any layout holds
    assert len(more) == 3


def test_random_hflip_mirrors_the_boxes_with_the_image():
    from iclevr.images import random_hflip

    pixels = torch.zeros(8, 3, 4, 4)
    pixels[:, :, :, 0] = 1  # a bright left column
    boxes = torch.tensor([[[0.0, 0.1, 0.25, 0.9]]]).repeat(8, 1, 1)
    torch.manual_seed(0)
    flipped, moved = random_hflip(pixels, boxes=boxes)
    for image, box in zip(flipped, moved):
        left = bool(image[0, 0, 0] == 1)
        assert box.tolist()[0] == pytest.approx([0.0, 0.1, 0.25, 0.9] if left else [0.75, 0.1, 1.0, 0.9])


# --- the pipeline -------------------------------------------------------------------------------------------------
def test_pipeline_draws_a_layout_from_its_prior_and_obeys_a_given_one(layout_pipe, tmp_path):
    labels = [["red sphere", "cyan cube"], ["gray cylinder"]]
    drawn = _sample(layout_pipe, labels)
    assert [sorted(item["label"] for item in layout) for layout in drawn.layouts] == [["cyan cube", "red sphere"], ["gray cylinder"]]
    assert sorted(item["box"] for item in drawn.layouts[0]) == sorted(PRIOR["2"][0])
    # the noise comes first: the same seed with the drawn layouts given back draws the same images
    again = _sample(layout_pipe, labels, layouts=drawn.layouts)
    assert torch.equal(again.images, drawn.images) and again.layouts == drawn.layouts
    moved = [[{"label": "red sphere", "box": [0.6, 0.6, 0.9, 0.9]}, {"label": "cyan cube", "box": [0.0, 0.0, 0.3, 0.3]}],
             [{"label": "gray cylinder", "box": [0.4, 0.1, 0.6, 0.3]}]]
    assert not torch.equal(_sample(layout_pipe, labels, layouts=moved).images, drawn.images)
    # guidance off (one pass), several images per condition, tuples
    images, layouts = layout_pipe(labels, layouts=moved, num_inference_steps=1, guidance_scale=1.0, num_images_per_prompt=2,
                                  output_type="pt", return_dict=False)
    assert images.shape == (4, 3, 16, 16) and layouts[0] == layouts[1] == [{"label": "red sphere", "box": [0.6, 0.6, 0.9, 0.9]},
                                                                           {"label": "cyan cube", "box": [0.0, 0.0, 0.3, 0.3]}]
    layout_pipe.save_pretrained(tmp_path)
    loaded = ICLEVRPipeline.from_pretrained(tmp_path)
    assert loaded.config.layout_prior == PRIOR and loaded.uses_layouts


def test_pipeline_takes_a_single_layout_bare(layout_pipe):
    out = _sample(layout_pipe, ["red sphere"], layouts=[{"label": "red sphere", "box": [0.1, 0.2, 0.3, 0.4]}])
    assert out.layouts == [[{"label": "red sphere", "box": [0.1, 0.2, 0.3, 0.4]}]]


@pytest.mark.parametrize("layouts, message", [
    ([[{"label": "red sphere", "box": [0.1, 0.1, 0.2, 0.2]}]], "the layout places ['red sphere'] but the condition asks for"),
    ([[{"label": "red sphere", "box": [0.1, 0.1, 0.2, 1.2]}, {"label": "cyan cube", "box": [0, 0, 1, 1]}]], "0 <= y0 < y1 <= 1"),
    ([[{"label": "red sphere", "box": [0.1, 0.1, 0.2]}, {"label": "cyan cube", "box": [0, 0, 1, 1]}]], "four finite numbers"),
    ([[{"label": "red sphere", "box": [0.1, 0.1, 0.2, 0.2]}, {"label": "cyan cube", "box": [0, 0, 1, 1]}]] * 2, "2 layouts for 1 conditions"),
    ([[{"label": "pink sphere", "box": [0.1, 0.1, 0.2, 0.2]}]], "pink sphere"),
    ([["red sphere"]], "give {'label': name, 'box'"),
])
def test_bad_layouts_are_refused_clearly(layout_pipe, layouts, message):
    with pytest.raises(ValueError) as error:
        _sample(layout_pipe, [["red sphere", "cyan cube"]], layouts=layouts)
    assert message in str(error.value)


def test_a_label_only_model_refuses_layouts():
    pipe = ICLEVRPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(num_train_timesteps=100))
    with pytest.raises(ValueError, match="this model is label-only"):
        _sample(pipe, ["red sphere"], layouts=[{"label": "red sphere", "box": [0.1, 0.2, 0.3, 0.4]}])
    assert _sample(pipe, ["red sphere"]).layouts is None


def test_a_layout_model_without_a_prior_asks_for_layouts():
    pipe = ICLEVRPipeline(unet=tiny_unet(in_channels=27), scheduler=DDIMScheduler(num_train_timesteps=100))
    with pytest.raises(ValueError, match="pass layouts="):
        _sample(pipe, ["red sphere"])
    with pytest.raises(ValueError, match="layout_prior\\['2'\\]\\[0\\] must hold 2 boxes"):
        ICLEVRPipeline(unet=tiny_unet(in_channels=27), scheduler=DDIMScheduler(num_train_timesteps=100),
                       layout_prior={"2": [[[0, 0, 1, 1]]]})


def test_the_map_form_must_match_the_unets_channels():
    scheduler = DDIMScheduler(num_train_timesteps=100)
    words = ICLEVRPipeline(unet=tiny_unet(in_channels=3 + 11), scheduler=scheduler, layout_prior=PRIOR, layout_channels="words")
    words.set_progress_bar_config(disable=True)
    assert words.uses_layouts and _sample(words, ["red sphere", "cyan cube"]).images.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="or 14 for a layout model \\(its 11 layout-map channels, one per word\\)"):
        ICLEVRPipeline(unet=tiny_unet(in_channels=3 + 24), scheduler=scheduler, layout_channels="words")
    with pytest.raises(ValueError, match="layout_channels must be one of"):
        ICLEVRPipeline(unet=tiny_unet(in_channels=3 + 24), scheduler=scheduler, layout_channels="colours")


# --- training -----------------------------------------------------------------------------------------------------
class RecordingUNet(torch.nn.Module):
    """Stands in for the UNet in `diffusion_loss`: records what it is fed, predicts the image channels back."""

    config = SimpleNamespace(class_embed_type="projection", projection_class_embeddings_input_dim=24, encoder_hid_dim_type=None)

    def forward(self, sample, timestep, class_labels=None, encoder_hidden_states=None):
        self.sample, self.class_labels = sample, class_labels
        return SimpleNamespace(sample=sample[:, :3])


@pytest.mark.parametrize("condition_dropout, layout_dropout, labels_kept, map_kept", [
    (0.0, 0.0, True, True), (0.0, 0.999, True, False), (0.999, 0.0, False, False)])
def test_condition_dropout_drops_labels_and_map_together_and_the_map_alone(condition_dropout, layout_dropout, labels_kept, map_kept):
    from iclevr import ddpm

    args = ddpm.parse_args(["--resolution", "16", "--patch_size", "1", "--block_out_channels", "8,16", "--attention_head_dim", "8",
                            "--condition_dropout", str(condition_dropout), "--layout_dropout", str(layout_dropout),
                            "--weighting_scheme", "none", "--output_dir", "unused"])
    unet, scheduler = RecordingUNet(), ddpm.build_noise_scheduler(args)
    labels = VOCAB.read([["red sphere"]] * 4)
    layout = torch.ones(4, 24, 16, 16)
    ddpm.diffusion_loss(unet, scheduler, torch.zeros(4, 3, 16, 16), labels, args, layout=layout)
    assert unet.sample.shape == (4, 27, 16, 16)
    assert bool((unet.class_labels == labels).all()) is labels_kept and bool((unet.class_labels == 0).all()) is not labels_kept
    assert bool((unet.sample[:, 3:] == 1).all()) is map_kept and bool((unet.sample[:, 3:] == 0).all()) is not map_kept


TINY = ["--resolution", "16", "--patch_size", "1", "--block_out_channels", "8,16", "--attention_head_dim", "8", "--train_batch_size", "4",
        "--max_train_steps", "1", "--lr_warmup_steps", "0"]


@pytest.mark.parametrize("mode, channels, in_channels, log", [("auto", "labels", 27, "Conditioning: layouts from"),
                                                            ("auto", "words", 14, "Conditioning: layouts from"),
                                                            ("off", "words", 3, "label-only: --layout_conditioning off")])
def test_the_trainer_uses_layouts_where_the_data_has_them(rendered_dir, tmp_path, mode, channels, in_channels, log):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / "train_conditional_ddpm.py"), "--train_data_dir", str(rendered_dir),
                             "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--layout_conditioning", mode,
                             "--layout_channels", channels, *TINY], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert log in result.stderr
    assert json.loads((out / "unet" / "config.json").read_text())["in_channels"] == in_channels
    index = json.loads((out / "model_index.json").read_text())
    assert (index["layout_prior"] is not None) is (mode == "auto")
    if mode == "auto":  # the prior holds the training data's own boxes
        truth = {json.dumps(item["box"]) for layout in json.loads((rendered_dir / "layouts.json").read_text()).values() for item in layout}
        assert {json.dumps(box) for layouts in index["layout_prior"].values() for layout in layouts for box in layout} <= truth
        assert "learns from the renderer's object positions" in (out / "README.md").read_text()
        pipe = ICLEVRPipeline.from_pretrained(out)  # the saved map form is the one it trained with
        assert pipe.config.layout_channels == channels and pipe.uses_layouts
        result = pipe(["red sphere"], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
        assert result.images.shape == (1, 16, 16, 3) and len(result.layouts[0]) == 1


def test_layouts_required_but_missing_is_a_clear_error(tmp_path, rendered_dir):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(rendered_dir, data)
    (data / "layouts.json").unlink()
    result = subprocess.run([sys.executable, str(ROOT / "train_conditional_ddpm.py"), "--train_data_dir", str(data),
                             "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"),
                             "--layout_conditioning", "on", *TINY], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode != 0 and "--layout_conditioning on needs layouts" in result.stderr
    assert not (tmp_path / "out" / "model_index.json").exists()


# --- the report's measure -----------------------------------------------------------------------------------------
def test_the_layout_measure_tells_obeyed_from_misplaced_objects():
    """Rendered scenes cut at their true boxes are read far more often than cut at another scene's: the measure can fail."""
    from iclevr.evaluator import SHIPPED_EVALUATOR, Evaluator
    from iclevr.obedience import box_crops, floor_image, read_in_boxes, rendered_with_layouts, shifted
    from iclevr.render.scenes import sample_condition_set

    conditions = sample_condition_set(7, [2] * 12 + [3] * 12)
    images, truth = rendered_with_layouts(conditions, 64, seed=5)
    floor = floor_image(64)
    crops, labels = box_crops(images, truth, floor)
    assert len(crops) == sum(map(len, conditions)) and np.array_equal(crops[0][0, 0], floor[0, 0]) and labels[0] == [truth[0][0]["label"]]
    evaluator = Evaluator.from_pretrained(SHIPPED_EVALUATOR)
    obeyed, chance = read_in_boxes(evaluator, images, truth, floor), read_in_boxes(evaluator, images, shifted(truth), floor)
    # i-CLEVR's first object stands at the centre of every scene, so another scene's first box still holds it: about a
    # third of the objects are read at chance, the others not.
    assert obeyed >= 0.7 and chance <= 0.5 and obeyed - chance >= 0.4, (obeyed, chance)
