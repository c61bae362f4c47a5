"""
Packaging for origdst.

The twistd plugin lives in twisted/plugins/, which has no __init__.py on purpose:
listing it as a package ships the plugin file into the installed twisted.plugins.
"""

from setuptools import setup

setup(
    name="origdst",
    version="0.1.0",
    description="A transparent forward proxy for Linux: iptables REDIRECT in, "
    "original destination out (Envoy's original_dst cluster, on Twisted).",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    packages=["origdst", "twisted.plugins"],
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
