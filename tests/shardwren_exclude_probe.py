"""A module of the tests folder that tasks import (test_pywren_compat: exclude_modules)."""


def add_one(x):
    return x + 1
