"""Converting the public torchvision and detectron2 checkpoints to kmask models.

``convert_weights`` (and ``kmask convert-weights``) reads a checkpoint file, builds the
kmask model whose config reproduces the source's conventions, fills every weight (each
key used once, every shape checked) and writes a run directory. The architecture may be
left out where the file's keys and shapes name it (``ArchitectureDetection``), and a given
one that they contradict is refused before anything is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from kmask.convert.architecture_detection import ArchitectureDetection
from kmask.convert.converter import Converter
from kmask.convert.detectron2_converter import Detectron2Converter
from kmask.convert.torchvision_converter import TorchvisionConverter
from kmask.errors import ConversionError

CONVERTERS: dict[str, type[Converter]] = {
    "torchvision": TorchvisionConverter,
    "detectron2": Detectron2Converter,
}
# source -> architecture names, for help texts.
ARCHITECTURES = {name: tuple(cls.ARCHITECTURES) for name, cls in CONVERTERS.items()}

__all__ = [
    "ARCHITECTURES",
    "CONVERTERS",
    "ArchitectureDetection",
    "ConversionError",
    "Converter",
    "Detectron2Converter",
    "TorchvisionConverter",
    "convert_weights",
]


def convert_weights(
    source: str,
    input_path: str | os.PathLike[str],
    arch: str | None,
    out: str | os.PathLike[str],
    overwrite: bool = False,
    keras_file: bool = False,
    on_detected: Callable[[str], None] | None = None,
) -> Path:
    """Converts ``input_path`` (a ``source`` checkpoint of ``arch``) to the run directory
    ``out`` (see ``write_converted_run``); returns ``out``.

    ``arch`` None: the one architecture whose layout the file's keys and shapes have
    (``ArchitectureDetection``), passed to ``on_detected`` before the conversion starts. A
    given ``arch`` is checked against that layout first.

    Raises:
      ConversionError: unknown source or architecture; an ``arch`` the keys contradict
        (naming the detected one); no ``arch`` and several or none fitting; a file of the
        wrong format, or weights that do not fit (naming the key and both shapes).
      FileExistsError: ``out`` exists and ``overwrite`` is False, or holds
        ``input_path``, or ``overwrite`` may not replace it (``OutputFolder.problem``);
        checked first.
      FileNotFoundError: ``input_path`` does not exist.
      ImportError: a ``.pth`` file without PyTorch 2.10 or newer.
    """
    from kmask.convert.checkpoint_reader import read_detectron2_pickle, read_torch_state_dict
    from kmask.convert.converted_run import write_converted_run
    from kmask.data.output_folder import OutputFolder

    if source not in CONVERTERS:
        raise ConversionError(f"unknown source {source!r}; choose one of {sorted(CONVERTERS)}")
    converter_class = CONVERTERS[source]
    if arch is not None:
        converter_class(arch)  # an unknown name is refused before anything is read
    OutputFolder(out, "run", inputs=[input_path]).check(overwrite)
    input_path = Path(input_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"--input {input_path}: file not found")
    read = read_torch_state_dict if source == "torchvision" else read_detectron2_pickle
    arrays = read(input_path)
    resolved = ArchitectureDetection(converter_class, arrays, str(input_path)).resolve(arch)
    if arch is None and on_detected is not None:
        on_detected(resolved)
    converter = converter_class(resolved)
    config, model = converter.convert(arrays, str(input_path))
    categories = None
    if not converter.backbone_only:
        categories = converter.categories(config.model.num_classes)
    return write_converted_run(out, config, model, categories, overwrite, keras_file)
