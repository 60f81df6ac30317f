"""The distribution and the compiled tokenizer (everything else is in pyproject.toml).

One namespace, `rnnserve`: the repository's folders service/ and training/ are its subpackages through the
links rnnserve/service and rnnserve/training, so the tree is laid out as it imports and every tool that walks
directories (mypy, import-linter, an editable install's plain path entry) sees rnnserve.service where Python
does; no top-level `service` or `training` package is installed to clash with a user's own. optional=True:
where no C compiler is present the install still succeeds and the pure-Python reference tokenizer serves alone."""

from setuptools import Extension, find_packages, setup

# package_dir {"": "."}: an editable install is then a plain path entry (the repository's root), not an
# import hook that tools cannot follow.
setup(packages=find_packages(include=["rnnserve", "rnnserve.*"]), package_dir={"": "."},
      package_data={"rnnserve.service.http": ["ui/*"], "rnnserve.service.grpc": ["*.proto", "protocol.binpb"]},
      ext_modules=[Extension("rnnserve.service.core._fasttok", ["service/core/_fasttok.c"], optional=True,
                             extra_compile_args=["-O3"])])
