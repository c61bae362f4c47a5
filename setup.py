"""
Packaging for origdst.

The twistd plugin lives in twisted/plugins/, which has no __init__.py on purpose:
listing it as a package ships the plugin file into the installed twisted.plugins.
"""

import re

from setuptools import setup

with open("origdst/__init__.py", encoding="utf-8") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

setup(
    name="origdst",
    version=VERSION,
    description="A transparent forward proxy for Linux: iptables REDIRECT in, "
    "original destination out (Envoy's original_dst cluster, on Twisted).",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    packages=["origdst", "testbed", "twisted.plugins"],
    # The admin endpoint's live page.
    package_data={"origdst": ["page.html"]},
    install_requires=[
        # 22.4.0 fixes the request-smuggling CVE-2022-24801 in twisted.web.
        "twisted>=22.4.0",
        "zope.interface",
        "service-identity",
        "pyopenssl",
    ],
    classifiers=[
        "Framework :: Twisted",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: Proxy Servers",
    ],
)
