import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# One version, kept in gati/__init__.py (`gati --version` and the package agree).
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "gati" / "__init__.py").read_text(), re.M).group(1)

setup(
    name="gati",
    version=VERSION,
    description="Prediction serving with learned caches: early answers for deep networks",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["gati", "gati.*"]),
    package_data={"gati": ["py.typed"]},
    install_requires=[
        # 2.6: torch.load(weights_only=True) before it could be made to run code (CVE-2025-32434), and
        # deploy/propose load cache files that way; torchvision 0.21 is 2.6's
        "torch>=2.6",
        "torchvision>=0.21",
        "numpy>=1.24",
        "pyyaml>=6.0",
        "faiss-cpu>=1.7.4",
        "pillow>=9.0",
        "tqdm>=4.60",
        "thrift>=0.16",
        "hdrhistogram>=0.10",
        "prometheus-client>=0.18",
    ],
    extras_require={
        # tritonclient: the standard Open Inference Protocol client the tests talk to the aggregator with;
        # matplotlib: experiments/latency_sweep.py's figures (its tests draw them too)
        # moto 5.2.6 authorises S3's ListObjectsV2 as an action "s3:ListObjectsV2", which IAM does not have (AWS
        # checks s3:ListBucket), so the test that the instance role may list its bucket fails there; 5.2.5 is right
        "dev": ["pytest>=7.0", "boto3>=1.28", "moto[ec2,s3,iam,ssm]>=5.0,<5.2.6", "tritonclient[http]>=2.40",
                "matplotlib>=3.7,<4"],
        "aws": ["boto3>=1.28"],
        "experiments": ["matplotlib>=3.7,<4"],
    },
    entry_points={"console_scripts": ["gati=gati.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "Typing :: Typed"],
)
