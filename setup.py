from setuptools import find_packages, setup

from stacko import __version__

setup(
    name="stacko",
    version=__version__,
    description="Stackable overlayfs images, copy-on-write instances and stackpoints",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["stacko", "stacko.*"]),
    python_requires=">=3.9",
    install_requires=["subwrap"],
    extras_require={"test": ["pytest", "hypothesis"]},
    entry_points={"console_scripts": ["stacko = stacko.cli:console_main"]},
)
