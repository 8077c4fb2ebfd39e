"""``gpu_decoder=nvimgcodec``: the JPEGs of a ``decode=gpu`` batch decoded by NVIDIA nvImageCodec (the
library under DALI's decoders), which uses the hardware JPEG decoder of A100, H100 and H200 GPUs
(baseline JPEGs; the CUDA cores' nvJPEG for the rest) -- engines beside the streaming multiprocessors,
so decoding takes nothing from training. torchvision's ``decode_jpeg(device="cuda")`` decodes on the
CUDA cores only.

Optional: ``pip install nvidia-nvimgcodec-cu13 nvidia-nvjpeg`` (``-cu12`` for a CUDA 12 torch). The
images come out planar RGB uint8 (3×H×W, EXIF orientation ignored as PIL and torchvision do), reach torch
through DLPack on the current stream and are copied there into torch's own memory (nvImageCodec frees
its buffers on the decoding stream; torch's allocator keeps the copy for whichever stream uses it).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch

from ..errors import CrossLevelError
from .jpeg_views import decode_one_jpeg

INSTALL = "pip install nvidia-nvimgcodec-cu13 nvidia-nvjpeg (nvidia-nvimgcodec-cu12 for a CUDA 12 build of torch)"


class NvImageCodecJpegs:
    """Batched JPEG decoding with nvImageCodec: on a CUDA device with the backends hardware decoder, CUDA,
    hybrid CPU + CUDA, in that order; on the CPU with its CPU backend. A file it cannot decode (it
    returns None there) is decoded by torchvision, file by file (:func:`~.jpeg_views.decode_one_jpeg`:
    on the device, else the CPU, else an error naming it). The nvImageCodec decoder is made on the
    first batch, for that batch's device."""

    def __init__(self) -> None:
        try:
            self.codec = importlib.import_module("nvidia.nvimgcodec")
        except ImportError:
            raise CrossLevelError(f"gpu_decoder=nvimgcodec needs NVIDIA nvImageCodec: {INSTALL}; or gpu_decoder=torchvision") from None
        try:
            self.params = self.codec.DecodeParams(
                apply_exif_orientation=False, color_spec=self.codec.ColorSpec.SRGB, allow_any_depth=False,
                sample_format=self.codec.SampleFormat.P_RGB,
            )  # fmt: skip
        except (TypeError, AttributeError):  # before 0.9: no planar output
            raise CrossLevelError(f"gpu_decoder=nvimgcodec needs nvImageCodec 0.9 or newer (planar RGB output): {INSTALL}") from None
        self.decoder: object | None = None
        self.device: torch.device | None = None

    def _decoder_on(self, device: torch.device) -> object:
        if self.decoder is None or device != self.device:
            kinds = self.codec.BackendKind
            if device.type == "cuda":
                device_id, wanted = device.index or 0, (kinds.HW_GPU_ONLY, kinds.GPU_ONLY, kinds.HYBRID_CPU_GPU)
            else:
                device_id, wanted = self.codec.NVIMGCODEC_DEVICE_CPU_ONLY, (kinds.CPU_ONLY,)
            self.decoder = self.codec.Decoder(device_id=device_id, backends=[self.codec.Backend(kind) for kind in wanted])
            self.device = device
        return self.decoder

    def __call__(self, files: list[torch.Tensor], device: torch.device, names: Sequence[str]) -> list[torch.Tensor]:
        """JPEG ``files`` (uint8 bytes in host memory) → uint8 3×H×W RGB images on ``device``, in order."""
        if not files:
            return []
        stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
        streams = [self.codec.CodeStream(data.numpy()) for data in files]
        decoded = self._decoder_on(device).decode(streams, params=self.params, cuda_stream=stream)
        # cloned into torch's memory, on this stream: nvImageCodec frees its own buffers (cudaFreeAsync on the
        # decoding stream) when the image object goes, which record_stream cannot hold back for another stream
        return [
            decode_one_jpeg(data, device, name) if image is None else torch.from_dlpack(image).clone()
            for image, data, name in zip(decoded, files, names)
        ]
