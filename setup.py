"""kmask packaging. Metadata lives in pyproject.toml.

The RoIAlign custom op is not compiled here: pip builds in an isolated environment whose
TensorFlow may differ from the one kmask runs with, and the op's ABI is tied to the exact
TensorFlow build. Instead ``kmask build-ops`` (run by the README's install command) or the
first use compiles it against the running TensorFlow and caches it per TensorFlow version.
The op's sources ship inside the package as ``kmask/_csrc`` (mapped from custom_ops/roi_align)
for ``kmask build-ops``, and the experiment configs as ``kmask/_configs`` (mapped from
configs/, ``_base_/`` included) so that ``--config NAME`` works from a wheel.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["kmask", "kmask.*"]), "kmask._csrc", "kmask._configs"],
    package_dir={"kmask._csrc": "custom_ops/roi_align", "kmask._configs": "configs"},
    package_data={
        "kmask._csrc": ["*.h", "*.cuh", "*.cc"],
        "kmask._configs": ["*.yaml", "_base_/*.yaml"],
    },
)
