"""decode=gpu on a CPU: the JPEG check, the byte loader, per-image crops of images of different sizes,
the mapping onto the on-device view maker, the same views for the same seed, the fallbacks, the
config rules, and the whole pipeline with the decode on the CPU (all but the nvJPEG call itself)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from crosslevel.cli import main
from crosslevel.config import apply_overrides, load_preset
from crosslevel.data import datamodule as datamodule_file
from crosslevel.data.datamodule import ContrastiveDataModule, jpeg_views, load_data
from crosslevel.data.device_views import DeviceAugment, sample_crops
from crosslevel.data.folders import IMAGENET_MEAN, IMAGENET_STD
from crosslevel.data.jpeg_views import (
    DecodeAhead, DecodedBatch, EncodedBatch, EncodedFiles, JpegViews, collate_encoded, decode, non_jpegs_sampled, read_file, resized_crops,
)
from crosslevel.errors import CrossLevelError, CrossLevelWarning

SIZES = [(40, 56), (48, 36), (33, 33), (60, 44)]  # height, width: JPEGs of different sizes
TINY = ["backbone=smallcnn", "width=4", "feature_dim=16", "batch_size=8", "num_groups=2", "epochs=1", "limit_train_batches=2",
        "progress=false", "workers=0", "knn_k=3", "accelerator=cpu", "dataset=folder", "in_memory=false", "image_size=32",
        "class_subset=", "mlp=false", "normlinear=false", "queue_size=64", "precision=32-true", "devices=1"]  # fmt: skip


def smooth_photo(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 height×width×3 image of smooth colour blobs (JPEG keeps it close)."""
    coarse = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    fine = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return (fine[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def write_jpeg_folder(root: Path, classes: int = 2, per_class: int = 8) -> Path:
    """``train/`` + ``test/`` class folders of JPEGs of the :data:`SIZES` in turn; returns ``root``."""
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                height, width = SIZES[i % len(SIZES)]
                Image.fromarray(smooth_photo(height, width, 10 * c + i)).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def encoded_batch(paths: list[Path]) -> EncodedBatch:
    return collate_encoded([EncodedFiles(paths)[i] for i in range(len(paths))])


def test_non_jpeg_files_are_found_by_their_first_bytes_in_an_even_sample(tmp_path: Path) -> None:
    jpegs = [tmp_path / f"{i}.jpg" for i in range(6)]
    for path in jpegs:
        Image.fromarray(smooth_photo(8, 8, 0)).save(path, format="JPEG")
    assert non_jpegs_sampled(jpegs) == ([], 6)
    disguised = tmp_path / "png_named.jpg"  # a PNG with a JPEG suffix
    Image.fromarray(smooth_photo(8, 8, 0)).save(disguised, format="PNG")
    (tmp_path / "empty.jpg").write_bytes(b"")
    paths = [*jpegs, disguised, tmp_path / "missing.jpg", tmp_path / "empty.jpg"]
    assert non_jpegs_sampled(paths) == (paths[6:], 9)
    assert non_jpegs_sampled(paths, sample=3) == ([disguised], 3)  # every third: 0, 3, 6


def test_collated_batch_keeps_bytes_on_the_host(tmp_path: Path) -> None:
    paths = sorted(write_jpeg_folder(tmp_path).glob("train/*/*.jpg"))[:3]
    batch = encoded_batch(paths)
    assert [torch.equal(data, read_file(str(path))) for data, path in zip(batch.files(), paths)] == [True] * 3
    moved = batch.to("meta")  # the indices move, the bytes stay where nvJPEG reads them
    assert moved.device == torch.device("meta") and moved.data is batch.data and moved.names == tuple(map(str, paths))


def test_decode_on_cpu_equals_pil_closely(tmp_path: Path) -> None:
    """torchvision's CPU decoder against PIL (both libjpeg-turbo); nvJPEG's IDCT rounds a little differently."""
    paths = sorted(write_jpeg_folder(tmp_path).glob("train/*/*.jpg"))[:4]
    images = decode(encoded_batch(paths).files(), torch.device("cpu"))
    for image, path in zip(images, paths):
        pil = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        assert image.shape == pil.shape and (image.int() - pil.int()).abs().max() <= 2


def test_other_formats_among_jpegs_are_decoded_on_the_cpu_in_order(tmp_path: Path) -> None:
    """ImageNet's train split holds a PNG named .JPEG (and CMYK JPEGs): decoded file by file, in place."""
    jpegs = sorted(write_jpeg_folder(tmp_path).glob("train/*/*.jpg"))[:3]
    png, grey16, cmyk = tmp_path / "png.JPEG", tmp_path / "grey16.png", tmp_path / "cmyk.jpg"
    Image.fromarray(smooth_photo(20, 24, 1)).save(png, format="PNG")
    grey = smooth_photo(10, 12, 2)[..., 0]
    Image.fromarray(grey.astype(np.uint16) * 257).save(grey16, format="PNG")  # 16 bits a pixel: scaled to 8
    Image.fromarray(smooth_photo(16, 16, 3)).convert("CMYK").save(cmyk, format="JPEG")
    paths = [jpegs[0], png, jpegs[1], grey16, cmyk, jpegs[2]]
    images = decode(encoded_batch(paths).files(), torch.device("cpu"))
    assert torch.equal(images[3], torch.from_numpy(grey).expand(3, -1, -1))  # (PIL's convert("RGB") clips it to white)
    for image, path in zip(images[:3] + images[4:], paths[:3] + paths[4:]):
        pil = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        tolerance = 0 if path == png else 2  # PNG is lossless
        assert image.dtype == torch.uint8 and image.shape == pil.shape and (image.int() - pil.int()).abs().max() <= tolerance


def test_jpeg_views_warn_once_of_other_formats(tmp_path: Path) -> None:
    paths = sorted(write_jpeg_folder(tmp_path).glob("train/*/*.jpg"))[:4]
    Image.fromarray(smooth_photo(20, 20, 0)).save(paths[1], format="PNG")
    views = JpegViews(DeviceAugment("v2", 32, IMAGENET_MEAN, IMAGENET_STD), decode_device="cpu")
    with pytest.warns(CrossLevelWarning, match=rf"decode=gpu: {paths[1]} is not a JPEG file; files of other formats are decoded on the CPU") as caught:
        for _ in range(2):
            made, _ = views(encoded_batch(paths))
    assert len(caught) == 1 and all(view.shape == (4, 3, 32, 32) for view in made)


@pytest.mark.parametrize("damage", ["truncated_jpeg", "not_an_image"])
def test_a_file_that_does_not_decode_is_named(tmp_path: Path, damage: str) -> None:
    good = tmp_path / "good.jpg"
    Image.fromarray(smooth_photo(8, 8, 0)).save(good)
    head = good.read_bytes()[:3] if damage == "truncated_jpeg" else b"GIF"
    (tmp_path / "bad.jpg").write_bytes(head + b"\x00" * 40)
    batch = encoded_batch([good, tmp_path / "bad.jpg"])
    with pytest.raises(CrossLevelError, match=r"cannot decode .*bad\.jpg"):
        decode(batch.files(), torch.device("cpu"), batch.names)


def test_crop_sampler_with_per_image_sizes_equals_one_call_per_size() -> None:
    """Row i of a batch of mixed sizes is row i of a one-size batch of image i's size, same generator state
    (the draws do not depend on the sizes); very elongated sizes hit the central-crop fallback."""
    sizes = [(32, 32), (224, 400), (500, 375), (10, 40), (40, 10), (7, 1000)]
    heights, widths = (torch.tensor(side).repeat(50) for side in zip(*sizes))
    mixed = sample_crops(len(heights), heights, widths, (0.2, 1.0), (3 / 4, 4 / 3), torch.device("cpu"), torch.Generator().manual_seed(1))
    for i, (height, width) in enumerate(sizes):
        one = sample_crops(len(heights), height, width, (0.2, 1.0), (3 / 4, 4 / 3), torch.device("cpu"), torch.Generator().manual_seed(1))
        assert torch.equal(mixed[i :: len(sizes)], one[i :: len(sizes)])
    top, left, crop_h, crop_w = mixed.unbind(dim=1)
    assert (top >= 0).all() and (left >= 0).all() and (top + crop_h <= heights).all() and (left + crop_w <= widths).all()


def test_resized_crops_equal_torchvision_per_image() -> None:
    generator = torch.Generator().manual_seed(2)
    images = [torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8) for h, w in [(40, 56), (300, 250), (33, 33)]]
    boxes = [[3, 5, 30, 40], [10, 0, 290, 180], [0, 0, 33, 33]]  # up- and downsampled to 64
    flip = torch.tensor([False, True, True])
    ours = resized_crops(images, boxes, flip, 64)
    for image, (top, left, height, width), flipped, view in zip(images, boxes, flip, ours):
        reference = TF.resized_crop(image.float() / 255, top, left, height, width, [64, 64], antialias=True)
        torch.testing.assert_close(view, TF.horizontal_flip(reference) if flipped else reference, atol=1e-5, rtol=0)


def test_views_of_one_size_equal_the_on_device_path(tmp_path: Path) -> None:
    """Images of one size, crops upsampled: the per-image path gives the batched on-device views, parameters alike."""
    paths = [tmp_path / f"{i}.jpg" for i in range(6)]
    for i, path in enumerate(paths):
        Image.fromarray(smooth_photo(24, 24, i)).save(path)
    augment = DeviceAugment("v2", 48, IMAGENET_MEAN, IMAGENET_STD)
    views = JpegViews(augment, num_views=2)
    torch.manual_seed(3)
    ours = torch.cat(views(encoded_batch(paths))[0])
    images = decode(encoded_batch(paths).files(), torch.device("cpu"))
    torch.manual_seed(3)
    params = views.sample(images)
    reference = augment.apply(torch.stack(images).repeat(2, 1, 1, 1), params)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)


def test_compiling_the_views_compiles_what_follows_the_crops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``compile=true`` compiles the stacked batch's colour/blur/erasing/normalisation (the crops are per image,
    of images of their own sizes): the views go through the compiled function, and are the same views."""
    paths = sorted(write_jpeg_folder(tmp_path).glob("train/*/*.jpg"))
    compiled: list[dict] = []
    calls: list[int] = []

    def spy(fn, **options):  # noqa: ANN001, ANN003, ANN202 - stands in for torch.compile
        compiled.append(options)
        return lambda *args: calls.append(1) or fn(*args)

    views = JpegViews(DeviceAugment("v2", 32, IMAGENET_MEAN, IMAGENET_STD), num_views=2, decode_device="cpu")
    torch.manual_seed(4)
    eager = views(encoded_batch(paths))[0]
    monkeypatch.setattr(torch, "compile", spy)
    views.compile_views("reduce-overhead")
    torch.manual_seed(4)
    assert all(torch.equal(a, b) for a, b in zip(views(encoded_batch(paths))[0], eager))
    assert compiled == [{"dynamic": False, "mode": "reduce-overhead"}] and len(calls) == 1


def test_same_seed_same_views_parameters_drawn_on_the_cpu(tmp_path: Path) -> None:
    paths = sorted(write_jpeg_folder(tmp_path).glob("train/*/*.jpg"))
    views = JpegViews(DeviceAugment("cifar", 32, IMAGENET_MEAN, IMAGENET_STD), num_views=3, decode_device="cpu")
    runs = []
    for seed in (4, 4, 5):
        torch.manual_seed(seed)
        runs.append(views(encoded_batch(paths))[0])
    assert len(runs[0]) == 3 and runs[0][0].shape == (len(paths), 3, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1])) and not torch.equal(runs[0][0], runs[2][0])
    params = views.sample(decode(encoded_batch(paths).files(), torch.device("cpu")))
    assert all(value.device == torch.device("cpu") for value in params.values())  # torch's global CPU generator
    heights = torch.tensor([SIZES[i % len(SIZES)][0] for i in range(8)] * 2).repeat(3)
    assert (params["boxes"][:, 0] + params["boxes"][:, 2] <= heights).all()  # each box inside its own image


def test_loader_yields_encoded_batches_and_the_data_module_makes_views(tmp_path: Path) -> None:
    data = write_jpeg_folder(tmp_path)
    cfg = apply_overrides(load_preset("imagenet-cldm"), TINY + [f"data={data}", "decode=gpu", "workers=1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CrossLevelWarning)  # no fallback
        datamodule = ContrastiveDataModule(cfg, load_data(cfg), decode_device="cpu")
    batch = next(iter(datamodule.loader))  # through a worker process
    assert isinstance(batch, EncodedBatch) and batch.indices.shape == (8,) and len(batch.files()) == 8
    assert datamodule.train_dataloader().sampler is datamodule.sampler  # where Lightning sets the epoch
    decoded = next(iter(datamodule.train_dataloader()))  # what training reads: decoded ahead
    assert isinstance(decoded, DecodedBatch) and torch.equal(decoded.indices, batch.indices) and len(decoded.images) == 8
    torch.manual_seed(0)
    views, indices = datamodule.on_after_batch_transfer(batch.to("cpu"), 0)
    assert len(views) == 3 and all(view.shape == (8, 3, 32, 32) for view in views)  # CLDm: 3 views
    assert torch.equal(indices, batch.indices) and not torch.equal(views[0], views[1])
    torch.manual_seed(0)
    ahead, _ = datamodule.on_after_batch_transfer(decoded.to("cpu"), 0)
    assert all(torch.equal(a, b) for a, b in zip(ahead, views))  # the same draws, the same views


def test_decode_ahead_decodes_the_next_batch_before_handing_on_this_one(tmp_path: Path) -> None:
    paths = sorted(write_jpeg_folder(tmp_path).glob("train/*/*.jpg"))
    batches = [encoded_batch(paths[start : start + 4]) for start in range(0, 16, 4)]
    views = JpegViews(DeviceAugment("v2", 32, IMAGENET_MEAN, IMAGENET_STD), decode_device="cpu")
    decoded_at: list[int] = []
    original = views.decode_files
    views.decode_files = lambda batch, device: (decoded_at.append(int(batch.indices[0])), original(batch, device))[1]
    ahead = DecodeAhead(batches, views, lambda: torch.device("cpu"))
    assert len(ahead) == 4
    handed = []
    for batch in ahead:
        handed.append(int(batch.indices[0]))
        assert len(decoded_at) == min(len(handed) + 1, 4)  # batch i + 1 was decoded before batch i came out
    assert handed == decoded_at == [int(b.indices[0]) for b in batches]
    for batch, source in zip(DecodeAhead(batches, views, lambda: torch.device("cpu")), batches):
        assert all(torch.equal(a, b) for a, b in zip(batch.images, decode(source.files(), torch.device("cpu"))))
    assert list(DecodeAhead([], views, lambda: torch.device("cpu"))) == []


def test_falls_back_to_pil_without_a_gpu_or_when_most_files_are_not_jpegs(tmp_path: Path) -> None:
    data = write_jpeg_folder(tmp_path)
    cfg = apply_overrides(load_preset("imagenet-cldm"), TINY + [f"data={data}", "decode=gpu"])
    with pytest.warns(CrossLevelWarning, match="decode=gpu: training will not run on a CUDA GPU; decoding with PIL") as caught:
        datamodule = ContrastiveDataModule(cfg, load_data(cfg))
    assert len(caught) == 1 and datamodule.views is None
    views, indices = next(iter(datamodule.train_dataloader()))  # today's path: torchvision views from the workers
    assert len(views) == 3 and views[0].shape == (8, 3, 32, 32)
    for path in sorted(data.glob("train/*/*.jpg"))[1::2]:  # half the files plus one: not worth decoding on the GPU
        Image.fromarray(smooth_photo(20, 20, 0)).save(path, format="PNG")
    Image.fromarray(smooth_photo(20, 20, 0)).save(data / "train" / "class0" / "000.jpg", format="PNG")
    with pytest.warns(CrossLevelWarning, match=r"decode=gpu: 9 of 16 training files checked are not JPEG files \(e\.g\. .*\.jpg\); decoding with PIL") as caught:
        assert jpeg_views(cfg, load_data(cfg).train, decode_device="cpu") is None
    assert len(caught) == 1


@pytest.mark.parametrize(("accelerator", "cuda", "chosen"), [("auto", True, True), ("gpu", True, True), ("cpu", True, False), ("auto", False, False)])
def test_gpu_decode_is_chosen_only_when_training_on_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accelerator: str, cuda: bool, chosen: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg = apply_overrides(load_preset("imagenet-cldm"), TINY + [f"data={write_jpeg_folder(tmp_path)}", "decode=gpu", f"accelerator={accelerator}"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        views = jpeg_views(cfg, load_data(cfg).train)
    assert isinstance(views, JpegViews) == chosen and len(caught) == (0 if chosen else 1)
    assert views is None or views.decode_device is None  # decoded where the batch is: the GPU


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset=cifar10", "in_memory=true", "image_size=0"], "needs dataset=folder or lists"),
        (["in_memory=true"], "needs in_memory=false"),
        (["augment_device=device"], "set augment_device=cpu"),
        (["augment=digits"], "augment=digits has no on-device version"),
        (["hc_frames=4"], "use decode=cpu"),
    ],
)
def test_decode_gpu_needs_files_read_on_the_fly(overrides: list[str], message: str) -> None:
    with pytest.raises(CrossLevelError, match=message):
        apply_overrides(load_preset("imagenet-cldm"), TINY + ["data=somewhere", "decode=gpu", *overrides])


def test_cli_trains_with_decode_gpu_decoding_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole decode=gpu training path with the decode on the CPU; then without that, one warning and PIL."""
    data = write_jpeg_folder(tmp_path / "data")
    overrides = TINY + [f"out={tmp_path}", "decode=gpu"]
    original = datamodule_file.jpeg_views
    monkeypatch.setattr(datamodule_file, "jpeg_views", lambda cfg, images, decode_device=None: original(cfg, images, "cpu"))
    for name, fallbacks in (("gpu", 0), ("pil", 1)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["train", "--config", "imagenet-cldm", "--data", str(data), f"name={name}", *overrides]) == 0
        assert sum(str(w.message).startswith("decode=gpu") for w in caught) == fallbacks
        assert json.loads((tmp_path / name / "summary.json").read_text())["knn"] is not None
        monkeypatch.setattr(datamodule_file, "jpeg_views", original)


class FakeNvImageCodec:
    """The part of NVIDIA nvImageCodec's Python API that gpu_decoder=nvimgcodec uses, decoding with PIL on the
    CPU: Decoder(device_id, backends).decode(code streams, params, cuda_stream) → images with __dlpack__ or None."""

    class BackendKind:
        HW_GPU_ONLY, GPU_ONLY, HYBRID_CPU_GPU, CPU_ONLY = "hw_gpu", "gpu", "hybrid", "cpu"

    class ColorSpec:
        SRGB = "srgb"

    class SampleFormat:
        P_RGB = "planar_rgb"

    NVIMGCODEC_DEVICE_CPU_ONLY = -99
    made: list[dict] = []

    @staticmethod
    def Backend(kind: str) -> tuple[str, str]:  # noqa: N802 - the library's name
        return ("backend", kind)

    @staticmethod
    def DecodeParams(**params: object) -> dict:  # noqa: N802
        return params

    @staticmethod
    def CodeStream(array: np.ndarray) -> bytes:  # noqa: N802
        assert array.dtype == np.uint8
        return array.tobytes()

    class Decoder:
        def __init__(self, device_id: int, backends: list) -> None:
            FakeNvImageCodec.made.append({"device_id": device_id, "backends": backends})

        def decode(self, streams: list[bytes], params: dict, cuda_stream: int) -> list[object]:
            assert params["sample_format"] == "planar_rgb" and params["apply_exif_orientation"] is False and cuda_stream == 0
            decoded = []
            for data in streams:
                try:
                    pixels = torch.from_numpy(np.array(Image.open(__import__("io").BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
                    decoded.append(pixels.contiguous())  # a tensor has __dlpack__, like nvImageCodec's Image
                except OSError:
                    decoded.append(None)  # what nvImageCodec returns for a file it cannot decode
            return decoded


def test_nvimgcodec_decoder_glue_order_fallback_and_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gpu_decoder=nvimgcodec against a stand-in library (the real one needs a CUDA driver even for its CPU
    backend): planar RGB through DLPack in order, None → torchvision for that file, CPU backend on the CPU."""
    import sys

    from crosslevel.data.nvimgcodec_decode import NvImageCodecJpegs

    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", FakeNvImageCodec)
    FakeNvImageCodec.made.clear()
    paths = sorted(write_jpeg_folder(tmp_path).glob("train/*/*.jpg"))[:3]
    png = tmp_path / "png.JPEG"
    Image.fromarray(smooth_photo(20, 24, 1)).save(png, format="PNG")
    batch = encoded_batch([paths[0], png, paths[1], paths[2]])
    decoder = NvImageCodecJpegs()
    calls = []
    original = FakeNvImageCodec.Decoder.decode
    monkeypatch.setattr(FakeNvImageCodec.Decoder, "decode", lambda self, streams, **kw: (calls.append(len(streams)), original(self, streams, **kw))[1])
    images = decode(batch.files(), torch.device("cpu"), batch.names, decoder)
    reference = decode(batch.files(), torch.device("cpu"), batch.names)
    assert calls == [3]  # the three JPEGs in one call; the PNG on the CPU by torchvision
    assert all(image.shape == ref.shape and (image.int() - ref.int()).abs().max() <= 2 for image, ref in zip(images, reference))
    assert FakeNvImageCodec.made == [{"device_id": -99, "backends": [("backend", "cpu")]}]  # made once, for the CPU
    decode(batch.files(), torch.device("cpu"), batch.names, decoder)
    assert len(FakeNvImageCodec.made) == 1
    monkeypatch.setattr(FakeNvImageCodec.Decoder, "decode", lambda self, streams, **kw: [None] * len(streams))
    fallback = decode(batch.files(), torch.device("cpu"), batch.names, decoder)  # nothing decoded: torchvision, file by file
    assert all(torch.equal(image, ref) for image, ref in zip(fallback, reference))


def test_nvimgcodec_is_chosen_by_config_and_missing_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from crosslevel.data.nvimgcodec_decode import NvImageCodecJpegs

    data = write_jpeg_folder(tmp_path)
    cfg = apply_overrides(load_preset("imagenet-cldm"), TINY + [f"data={data}", "decode=gpu", "gpu_decoder=nvimgcodec"])
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", FakeNvImageCodec)
    views = jpeg_views(cfg, load_data(cfg).train, decode_device="cpu")
    assert isinstance(views.jpegs_decoder, NvImageCodecJpegs)
    made, _ = views(encoded_batch(sorted(data.glob("train/*/*.jpg"))[:4]))
    assert len(made) == 3 and made[0].shape == (4, 3, 32, 32)
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # not installed
    with pytest.raises(CrossLevelError, match=r"gpu_decoder=nvimgcodec needs NVIDIA nvImageCodec: pip install nvidia-nvimgcodec-cu13"):
        jpeg_views(cfg, load_data(cfg).train, decode_device="cpu")
    with pytest.raises(CrossLevelError, match=r"gpu_decoder=nvimgcodec chooses decode=gpu's decoder: it needs decode=gpu"):
        apply_overrides(load_preset("imagenet-cldm"), TINY + ["data=x", "gpu_decoder=nvimgcodec"])


def test_decode_gpu_stopped_mid_epoch_resumes_mid_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode-ahead loader keeps the resumable loader's state: a SIGTERM mid-epoch resumes there."""
    from test_fault_tolerance import signal_at_step

    from crosslevel.run_dir import read_checkpoint

    data = write_jpeg_folder(tmp_path / "data", per_class=16)
    original = datamodule_file.jpeg_views
    monkeypatch.setattr(datamodule_file, "jpeg_views", lambda cfg, images, decode_device=None: original(cfg, images, "cpu"))
    overrides = [*TINY, "limit_train_batches=1.0", "epochs=2", f"out={tmp_path}", "name=mid", "decode=gpu"]
    with monkeypatch.context() as stop:
        signal_at_step(stop, step=1)
        assert main(["train", "--config", "imagenet-cldm", "--data", str(data / ""), *overrides]) == 128 + 15
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", f"resume={tmp_path / 'mid'}", "--data", str(data)]) == 0
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert read_checkpoint(tmp_path / "mid" / "checkpoints" / "last.ckpt")["global_step"] == 2 * (32 // 8)
