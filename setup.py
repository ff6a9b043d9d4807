from setuptools import find_packages, setup

setup(
    name="gati",
    version="0.1.0",
    description="Prediction serving with learned caches: early answers for deep networks",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["gati", "gati.*"]),
    install_requires=[
        "torch>=2.2",
        "torchvision>=0.17",
        "numpy>=1.24",
        "pyyaml>=6.0",
        "faiss-cpu>=1.7.4",
        "pillow>=9.0",
        "tqdm>=4.60",
        "thrift>=0.16",
        "hdrhistogram>=0.10",
        "prometheus-client>=0.17",
    ],
    extras_require={
        "dev": ["pytest>=7.0", "boto3>=1.28", "moto[ec2,s3,iam,ssm]>=5.0"],
        "aws": ["boto3>=1.28"],
    },
    entry_points={"console_scripts": ["gati=gati.cli:main"]},
)
