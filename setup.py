"""The one namespace and the compiled tokenizer (everything else is in pyproject.toml).

The repository keeps its folders (service/, training/) and the distribution installs them as
rnnserve.service and rnnserve.training, so no top-level `service` or `training` package can clash with a
user's own. optional=True: where no C compiler is present the install still succeeds and the pure-Python
reference tokenizer serves alone."""

from setuptools import Extension, find_packages, setup

FOLDERS = {"rnnserve.service": "service", "rnnserve.training": "training"}
packages = ["rnnserve"] + [f"rnnserve.{p}" for p in find_packages(include=["service", "service.*", "training",
                                                                             "training.*"])]

setup(packages=packages, package_dir={"rnnserve": "rnnserve", **FOLDERS},
      package_data={"rnnserve.service.http": ["ui/*"], "rnnserve.service.grpc": ["*.proto", "protocol.binpb"]},
      ext_modules=[Extension("rnnserve.service.core._fasttok", ["service/core/_fasttok.c"], optional=True,
                             extra_compile_args=["-O3"])])
