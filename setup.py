"""Package mapping: the design card keeps `operators/`, `model_zoo/` and `om_convert/` at the top
level, but their plain names are taken on PyPI, so they install as `ascend_adapt.operators`,
`ascend_adapt.model_zoo` and `ascend_adapt.om_convert`."""
from setuptools import find_packages, setup

ROOTS = {
    "ascend_adapt": "ascend_adapt",
    "ascend_adapt.operators": "operators",
    "ascend_adapt.model_zoo": "model_zoo",
    "ascend_adapt.om_convert": "om_convert",
}

packages = []
for pkg, folder in ROOTS.items():
    packages.append(pkg)
    packages += [f"{pkg}.{sub}" for sub in find_packages(folder)]

setup(
    packages=packages,
    package_dir=ROOTS,
    # data files (target profiles, op tables, error codes, the tiny-tokenizer corpus) ship in the wheel
    package_data={"": ["*.json", "*.yaml", "*.csv", "*.txt", "data/*", "data/**/*"]},
)
