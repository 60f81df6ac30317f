"""The compiled tokenizer (everything else is in pyproject.toml). optional=True: where no C compiler is
present the install still succeeds and the pure-Python reference tokenizer serves alone."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("service._fasttok", ["service/_fasttok.c"], optional=True,
                             extra_compile_args=["-O3"])])
