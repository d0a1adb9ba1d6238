"""``WeightTransfer``: initialize a model from a trained or converted kmask model, by name
(``kmask train --init-from``, fine-tuning to new classes, reusing stages in a new model)."""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import keras
import numpy as np

from kmask.errors import WeightTransferError
from kmask.modeling.roi_heads.box_head import BoxHead
from kmask.modeling.roi_heads.instance_head import ClassRows, instance_heads

LOADED = "loaded"
REINITIALIZED = "re-initialized"
NEW = "new"
CLASS_ROWS = "class rows"


def class_dependent_layers() -> dict[str, ClassRows | None]:
    """``{"head/layer": ClassRows or None}``: the layers whose shapes follow the number of
    classes (or of keypoints), as the box head and every registered instance head declare
    them (``class_dependent_layers``) under their layer names: ``box_head/cls_score``,
    ``box_head/bbox_pred``, ``mask_head/predictor``, ``keypoint_head/deconv``, ...

    ``ClassRows`` (units per class, whether a background slot always comes first) marks
    the layers whose output units are per class: with a class map each class's units are
    copied from its source class. A layer with a leading background slot only when it
    predicts one (``predict_background``) is recognized by one slot more than classes.
    """
    heads = {BoxHead.section: BoxHead, **instance_heads()}
    return {
        f"{section}/{name}": rows
        for section, head in heads.items()
        for name, rows in head.class_dependent_layers.items()
    }


def weight_names(model: keras.layers.Layer) -> dict[str, keras.Variable]:
    """The weights of ``model`` keyed by their name inside it.

    A weight's name is the path of layer names from ``model`` down to the layer that owns
    it, then the weight's own name: ``"backbone/conv1_conv/kernel"``,
    ``"roi_heads/box_head/cls_score/bias"``. It depends on the layer names only, not on how
    the model was built or loaded (Keras' ``variable.path`` does). A ``keras.Model``'s own
    name is left out, so the stage names of ``build_mask_rcnn`` (``backbone``, ``fpn``,
    ``rpn``, ``roi_heads``) come first whether the stages sit in a ``MaskRCNN`` or in a
    subclassed or functional model of the user's; a layer on its own keeps its name
    (``ResNet(name="backbone")`` holds ``"backbone/conv1_conv/kernel"``).
    """
    names: dict[str, keras.Variable] = {}

    def visit(layer: keras.layers.Layer, prefix: str) -> None:
        children = layer._flatten_layers(include_self=False, recursive=False)
        held = {id(weight) for child in children for weight in child.weights}
        for weight in layer.weights:
            if id(weight) not in held:
                names.setdefault(prefix + weight.name, weight)
        for child in children:
            visit(child, f"{prefix}{child.name}/")

    visit(model, "" if isinstance(model, keras.Model) else f"{model.name}/")
    return names


class WeightTransfer:
    """Copies weights into a model by name, re-initializing the class-dependent layers.

    Every weight of the target whose name (``weight_names``) and shape match a source
    weight is copied exactly (bit for bit). A weight of one of the class-dependent layers
    (``class_dependent_layers``: box classifier and regressor, mask predictor, keypoint
    predictor, those of any registered instance head) whose shape differs
    keeps the target's own initialization: that is fine-tuning to another number of
    classes. Target weights that the source does not have (a new head) keep their
    initialization; source weights the target does not have are ignored. Any other shape
    difference is refused before anything is copied. Optimizer state and step are not
    transferred: training starts at step 0.

    Example (the backbone and FPN of a trained detector under a new head)::

        transfer = WeightTransfer.from_path("runs/shapes_tiny")
        images = keras.Input((128, 128, 3))
        pyramid = FPN(num_channels=64, name="fpn")(ResNet(norm="gn", name="backbone")(images))
        model = keras.Model(images, MySegmentationHead()(pyramid))
        rows = transfer.load_into(model)  # backbone/* and fpn/* loaded, the head new
        print(WeightTransfer.format_table(rows))

    Class by class (``train.init_class_map``; the Mask R-CNN paper's Cityscapes model
    initialized from COCO): ``class_rows`` names the source class of each class of the
    target, and the per-class units of the class-row layers (the background's included)
    are copied from their source class, whatever the class counts; a class without a
    source class keeps its initialization::

        transfer = WeightTransfer.from_path("runs/coco_model")  # its categories.json
        rows = transfer.class_rows(("person", "rider", "car"), {"person": "person", "car": "car"})
        transfer.load_into(model, class_rows=rows)  # rows == (0, None, 2): rider new

    Args:
      weights: ``{name: array}`` as ``weight_names`` names them.
      source: what the weights came from, for messages (a path).
      class_names: the source model's class names in class order (its categories), for
        ``class_rows``; None when unknown.
    """

    def __init__(
        self,
        weights: Mapping[str, np.ndarray],
        source: str = "weights",
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.weights = {name: np.asarray(value) for name, value in weights.items()}
        self.source = source
        self.class_names = None if class_names is None else tuple(class_names)

    @classmethod
    def from_model(
        cls,
        model: keras.layers.Layer,
        source: str | None = None,
        class_names: Sequence[str] | None = None,
    ) -> WeightTransfer:
        """The weights of a built model or layer (copied now)."""
        arrays = {
            name: np.array(variable.numpy()) for name, variable in weight_names(model).items()
        }
        return cls(arrays, source or model.name, class_names)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> WeightTransfer:
        """The weights of a kmask model on disk.

        Args:
          path: a run directory of ``kmask train`` or ``kmask convert-weights`` (its
            ``config.yaml`` and latest checkpoint), a checkpoint file inside one
            (``RUN/checkpoints/ckpt-*.weights.h5``), or a ``.keras`` model file. The
            class names come from the run directory's ``categories.json`` (none for a
            ``.keras`` file).

        Raises:
          FileNotFoundError: ``path`` does not exist, or a run directory lacks its
            ``config.yaml`` or a checkpoint.
          WeightTransferError: a weights file outside a run directory (its architecture is
            unknown), a ``.keras`` file that is not an intact zip archive (truncated, or a
            member that fails its CRC check), or a file that cannot be read into its
            configured model.
        """
        from kmask.runs.inference_source import InferenceSource, load_checkpoint_model
        from kmask.runs.run_directory import RunDirectory

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"--init-from {path}: no such file or directory")
        run = None
        try:
            if path.is_dir():
                run = RunDirectory(path)
                model = InferenceSource.resolve(run=path).load_model()
            elif path.name.endswith(".keras"):
                import kmask.modeling  # noqa: F401 (registers the classes a .keras file names)

                _check_keras_archive(path)

                model = keras.saving.load_model(path, compile=False, safe_mode=True)
            elif path.name.endswith(".weights.h5"):
                run = RunDirectory.of_checkpoint(path)
                if not run.config_path.is_file():
                    raise WeightTransferError(
                        f"--init-from {path}: a weights file needs the config.yaml of its run "
                        f"directory ({run.config_path} not found) to know the architecture; "
                        "give a run directory, a checkpoint inside one, or a .keras file"
                    )
                model = load_checkpoint_model(run.load_config().model, path)
            else:
                raise WeightTransferError(
                    f"--init-from {path}: expected a run directory, a .weights.h5 checkpoint "
                    "of one, or a .keras file"
                )
            class_names = None
            if run is not None and run.categories_path.is_file():
                class_names = run.load_categories().category_names
        except (ValueError, KeyError, OSError) as error:
            if isinstance(error, (WeightTransferError, FileNotFoundError)):
                raise
            raise WeightTransferError(f"--init-from {path}: {error}") from None
        return cls.from_model(model, str(path), class_names)

    def class_rows(
        self, target_names: Sequence[str], class_map: Mapping[str, str]
    ) -> tuple[int | None, ...]:
        """The source class (0-based) of each target class, from a name map.

        Args:
          target_names: the target model's class names in class order.
          class_map: ``{target class name: source class name}``; target classes left out
            get None (they keep their initialization).

        Raises:
          WeightTransferError: the source's class names are unknown, or names of the map
            are not classes of the target (keys) or of the source (values); the message
            names every unknown name of both sides and lists the valid names.
        """
        if self.class_names is None:
            raise WeightTransferError(
                f"train.init_class_map: the class names of {self.source} are unknown (give a "
                "run directory of kmask train or kmask convert-weights, or a checkpoint "
                "inside one: their categories.json names the classes)"
            )
        problems = []
        for names, where, valid in (
            (class_map.keys(), "the training data's classes", target_names),
            (class_map.values(), f"the classes of {self.source}", self.class_names),
        ):
            unknown = sorted(set(names) - set(valid))
            if unknown:
                problems.append(f"{', '.join(unknown)} not among {where}: {', '.join(valid)}")
        if problems:
            raise WeightTransferError("train.init_class_map: " + "; ".join(problems))
        index = {name: k for k, name in enumerate(self.class_names)}
        return tuple(index[class_map[name]] if name in class_map else None for name in target_names)

    def load_into(
        self,
        model: keras.layers.Layer,
        class_dependent: Sequence[str] | None = None,
        class_rows: Sequence[int | None] | None = None,
    ) -> list[tuple[str, str, str]]:
        """Copies the matching weights into the built ``model``; see the class docstring.

        Args:
          model: a built ``MaskRCNN``, a model of the user's that holds kmask stages under
            their stage names, or a single stage layer.
          class_dependent: layer names (``"head/layer"``, matched anywhere in a weight's
            name) whose weights may differ in shape; they are then left as initialized.
            ``None``: ``class_dependent_layers()``.
          class_rows: the source class (0-based) of each class of the model, or None for
            a class that keeps its initialization (``class_rows``); the weights of the
            ``class_dependent_layers()`` with ``ClassRows`` are then copied class by class.

        Returns:
          One ``(name, status, why)`` row per target weight, ``status`` one of
          ``"loaded"``, ``"re-initialized"``, ``"new"`` and, with ``class_rows``,
          ``"class rows"`` (``format_table`` prints them).

        Raises:
          WeightTransferError: a weight outside ``class_dependent`` has another shape in
            the source (the message names each such layer and both shapes; nothing is
            copied), or no weight of the model has a name in the source; with
            ``class_rows``, a class-row weight whose units do not fit the class counts.
        """
        declared = class_dependent_layers()
        if class_dependent is None:
            class_dependent = tuple(declared)
        row_layers = {layer: rows for layer, rows in declared.items() if rows is not None}
        targets = weight_names(model)
        if not targets:
            raise WeightTransferError(
                f"cannot initialize {model.name} from {self.source}: it has no weights yet "
                "(build it first, e.g. model.build(...) or one call)"
            )
        rows, copies, refused = [], [], []
        for name, variable in targets.items():
            shape = tuple(variable.shape)
            if name not in self.weights:
                rows.append((name, NEW, "not in the source: kept its initialization"))
                continue
            source_shape = tuple(self.weights[name].shape)
            layer = _class_row_layer(name, row_layers) if class_rows is not None else None
            if layer is not None:
                try:
                    value, why = self._map_rows(name, variable, row_layers[layer], class_rows)
                except WeightTransferError as error:
                    refused.append(str(error))
                    continue
                rows.append((name, CLASS_ROWS, why))
                copies.append((variable, value))
            elif source_shape == shape:
                rows.append((name, LOADED, ""))
                copies.append((variable, self.weights[name]))
            elif any(f"/{layer}/" in f"/{name}" for layer in class_dependent):
                rows.append(
                    (
                        name,
                        REINITIALIZED,
                        f"class-dependent, source {source_shape} != model {shape}",
                    )
                )
            else:
                refused.append(f"{name}: source {source_shape}, model {shape}")
        if refused:
            raise WeightTransferError(
                f"cannot initialize {model.name} from {self.source}: "
                f"{len(refused)} weight(s) outside the class-dependent layers "
                f"({', '.join(class_dependent)}) have other shapes"
                + (" or do not fit the class map" if class_rows is not None else "")
                + ": "
                + "; ".join(refused)
            )
        if not copies:
            raise WeightTransferError(
                f"cannot initialize {model.name} from {self.source}: none of its "
                f"{len(targets)} weights has a name in the source (first model weight: "
                f"{next(iter(targets), 'none')}; first source weight: "
                f"{next(iter(self.weights), 'none')}); name the stages as the source does "
                "(backbone, fpn, rpn, roi_heads)"
            )
        for variable, value in copies:
            variable.assign(value)
        return rows

    def num_classes(self) -> int:
        """The source model's number of classes: its class names, else its box classifier.

        Raises:
          WeightTransferError: neither is known.
        """
        if self.class_names is not None:
            return len(self.class_names)
        bias = next((a for n, a in self.weights.items() if n.endswith("cls_score/bias")), None)
        if bias is None:
            raise WeightTransferError(
                f"the number of classes of {self.source} is unknown: no class names and no "
                "box_head/cls_score"
            )
        return bias.shape[-1] - 1

    def _map_rows(
        self,
        name: str,
        variable: keras.Variable,
        layout: ClassRows,
        class_rows: Sequence[int | None],
    ) -> tuple[np.ndarray, str]:
        """The target's value of a class-row weight (``layout``) with the units of each
        mapped class (and the background's) taken from its source class, and a
        description."""
        units, background_first = layout
        source = self.weights[name]
        value = np.array(variable.numpy())

        def background_slots(array: np.ndarray, num_classes: int, what: str) -> int:
            slots, extra = divmod(array.shape[-1], units)
            background = slots - num_classes
            if extra or background not in ((1,) if background_first else (0, 1)):
                raise WeightTransferError(
                    f"{name}: {what} {array.shape} does not hold {units} unit(s) for each "
                    f"of {num_classes} classes"
                    + ("" if background_first else " (and perhaps the background)")
                )
            return background

        target_background = background_slots(value, len(class_rows), "model")
        source_background = background_slots(source, self.num_classes(), "source")
        if value.shape[:-1] != source.shape[:-1]:
            raise WeightTransferError(f"{name}: source {source.shape}, model {value.shape}")
        pairs = [
            (k + target_background, j + source_background)
            for k, j in enumerate(class_rows)
            if j is not None
        ]
        if target_background and source_background:
            pairs.append((0, 0))
        for target_slot, source_slot in pairs:
            value[..., target_slot * units : (target_slot + 1) * units] = source[
                ..., source_slot * units : (source_slot + 1) * units
            ]
        kept = len(class_rows) - sum(j is not None for j in class_rows)
        return value, f"{len(class_rows) - kept} of {len(class_rows)} classes from the source"

    @staticmethod
    def format_table(rows: Sequence[tuple[str, str, str]]) -> str:
        """A per-stage count of loaded / re-initialized / new weights (and class-row
        copies, when there are some), then one line for each weight that was not loaded,
        with why."""
        statuses = (LOADED, REINITIALIZED, NEW)
        if any(row[1] == CLASS_ROWS for row in rows):
            statuses += (CLASS_ROWS,)
        counts: dict[str, dict[str, int]] = {}
        for name, status, _ in rows:
            stage = counts.setdefault(name.split("/")[0], dict.fromkeys(statuses, 0))
            stage[status] += 1
        width = max([len("stage"), *map(len, counts)])
        lines = [f"{'stage':<{width}}  " + "  ".join(f"{s:>14}" for s in statuses)]
        for stage, by_status in counts.items():
            lines.append(f"{stage:<{width}}  " + "  ".join(f"{by_status[s]:>14}" for s in statuses))
        total = {s: sum(1 for row in rows if row[1] == s) for s in statuses}
        lines.append(f"{'total':<{width}}  " + "  ".join(f"{total[s]:>14}" for s in statuses))
        lines.extend(f"{status}: {name} ({why})" for name, status, why in rows if status != LOADED)
        return "\n".join(lines)


def _check_keras_archive(path: Path) -> None:
    """Raises ``WeightTransferError`` naming ``path`` when it is not an intact ``.keras``
    zip archive: not a zip (truncated: its central directory is missing), or a member whose
    data is cut short or fails its CRC check (every member is read once)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise WeightTransferError(
            f"--init-from {path}: not a readable .keras file (a zip archive): {error}; it is "
            "truncated or damaged, save or copy it again"
        ) from None
    if damaged is not None:
        raise WeightTransferError(
            f"--init-from {path}: damaged .keras file: its member {damaged} fails the CRC "
            "check; save or copy it again"
        )


def _class_row_layer(name: str, row_layers: Mapping[str, ClassRows]) -> str | None:
    """The class-row layer (``"head/layer"``) a weight name belongs to, or None."""
    return next((layer for layer in row_layers if f"/{layer}/" in f"/{name}"), None)
