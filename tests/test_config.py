"""
Tests for L{origdst.config} and the plugin's L{origdst.tap.Options}.
"""

import os
import re

from twisted.python import usage
from twisted.trial import unittest

from origdst import config
from origdst.tap import Options


class SettingsTests(unittest.TestCase):
    def test_defaults(self):
        """
        The defaults are Envoy's where Envoy has one (README.rst, Running).
        """
        s = config.Settings()
        self.assertEqual(
            (s.port, s.cleanup_interval, s.connect_timeout, s.request_timeout),
            ("tcp:4999", 5.0, 5.0, 15.0),
        )
        self.assertEqual((s.server_name, s.header_prefix), ("origdst", "x-envoy"))
        self.assertEqual((s.max_connections, s.max_pending_requests), (1024, 1024))

    def test_bad_values_name_the_setting(self):
        """
        Each rejected value is reported with the setting's name and the value.
        """
        cases = [
            ("cleanup-interval", "0"),
            ("cleanup-interval", "soon"),
            ("connect-timeout", "-1"),
            ("request-timeout", "nan"),
            ("header-prefix", "x envoy"),
            ("server-name", "a\nb"),
            ("log-level", "loud"),
            ("max-connections", "0"),
            ("port", "70000"),
        ]
        for option, value in cases:
            e = self.assertRaises(config.ConfigError, config.parse, option, value)
            self.assertIn(option, str(e))
            self.assertIn(repr(value), str(e))

    def test_request_timeout_zero_disables(self):
        """
        A request timeout of 0 is allowed: it means none.
        """
        self.assertEqual(config.parse("request-timeout", "0"), 0.0)

    def test_bare_port_number(self):
        """
        A bare number is a TCP port; anything else is an endpoint description.
        """
        self.assertEqual(config.parse("port", "4999"), "tcp:4999")
        self.assertEqual(config.parse("port", "tcp6:4999"), "tcp6:4999")


class OptionsTests(unittest.TestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def parse(self, *argv):
        options = Options()
        options.parseOptions(list(argv))
        return options.settings

    def test_no_options(self):
        """
        With no option the settings are the defaults.
        """
        self.assertEqual(self.parse(), config.Settings())

    def test_flags(self):
        """
        Every flag is converted and lands in the settings.
        """
        s = self.parse(
            "--port", "5000", "--cleanup-interval", "1.5", "--request-timeout", "0",
            "--server-name", "edge", "--header-prefix", "X-Corp", "--log-level", "DEBUG",
        )
        self.assertEqual(
            (s.port, s.cleanup_interval, s.request_timeout, s.server_name, s.header_prefix, s.log_level),
            ("tcp:5000", 1.5, 0.0, "edge", "x-corp", "debug"),
        )

    def test_config_file_and_override(self):
        """
        The config file sets values; a flag given as well wins over it.
        """
        path = self.write("[origdst]\ncleanup-interval = 10\nconnect-timeout = 2\n")
        s = self.parse("--config", path, "--connect-timeout", "3")
        self.assertEqual((s.cleanup_interval, s.connect_timeout), (10.0, 3.0))

    def test_config_file_errors(self):
        """
        An unknown key, a bad value or a missing file is a usage error naming it.
        """
        for text, expected in [
            ("[origdst]\ncleanup-intervall = 10\n", "cleanup-intervall"),
            ("[origdst]\ncleanup-interval = never\n", "cleanup-interval: not a number"),
            ("[other]\nx = 1\n", "[other]"),
            ("no section here\n", "not a valid config file"),
        ]:
            path = self.write(text)
            e = self.assertRaises(usage.UsageError, self.parse, "--config", path)
            self.assertIn(expected, str(e))
            self.assertIn(path, str(e))
        e = self.assertRaises(usage.UsageError, self.parse, "--config", "/nonexistent/origdst.conf")
        self.assertIn("/nonexistent/origdst.conf", str(e))

    def test_bad_flag_is_usage_error(self):
        """
        A bad flag value is a usage error that names the flag and the value.
        """
        e = self.assertRaises(usage.UsageError, self.parse, "--connect-timeout", "abc")
        self.assertIn("--connect-timeout", str(e))
        self.assertIn("'abc'", str(e))

    def test_list_options_accumulate(self):
        """
        List options may be repeated; given on the command line they replace
        the config file's list, and a bad entry names the option and entry.
        """
        path = self.write("[origdst]\nallow = 10.0.0.0/8:80\ndeny = 169.254.169.254\n")
        s = self.parse("--config", path, "--allow", "192.168.0.0/16", "--allow", "[fd00::/8]:80,443")
        self.assertEqual(s.allow, ("192.168.0.0/16", "[fd00::/8]:80,443"))
        self.assertEqual(s.deny, ("169.254.169.254",))
        e = self.assertRaises(usage.UsageError, self.parse, "--allow", "10.0.0.0/8:http")
        self.assertIn("--allow", str(e))
        self.assertIn("http", str(e))
        e = self.assertRaises(usage.UsageError, self.parse, "--allow-host", "exa mple.com;bad_host")
        self.assertIn("bad_host", str(e))

    def test_flag_and_config_boolean(self):
        """
        --use-original-dst-header is off by default; on from the flag or the
        config file; a bad config value is named.
        """
        self.assertFalse(self.parse().use_original_dst_header)
        self.assertTrue(self.parse("--use-original-dst-header").use_original_dst_header)
        path = self.write("[origdst]\nuse-original-dst-header = yes\n")
        self.assertTrue(self.parse("--config", path).use_original_dst_header)
        path = self.write("[origdst]\nuse-original-dst-header = maybe\n")
        e = self.assertRaises(usage.UsageError, self.parse, "--config", path)
        self.assertIn("use-original-dst-header", str(e))

    def test_admin_loopback_only(self):
        """
        The admin endpoint must stay on loopback unless --admin-allow-remote
        is given; the error names the option and the description.
        """
        for description in ("tcp:9901", "tcp:9901:interface=0.0.0.0", "tcp6:9901:interface=\\:\\:"):
            e = self.assertRaises(usage.UsageError, self.parse, "--admin", description)
            self.assertIn("--admin", str(e))
            self.assertIn(description, str(e))
            self.assertIn("--admin-allow-remote", str(e))
        for description in ("tcp:9901:interface=127.0.0.2", "tcp6:9901:interface=\\:\\:1", "9902", "unix:/run/od.sock", "none"):
            self.assertTrue(self.parse("--admin", description).admin)
        s = self.parse("--admin", "tcp:9901:interface=0.0.0.0", "--admin-allow-remote")
        self.assertEqual(s.admin, "tcp:9901:interface=0.0.0.0")

    def test_bad_endpoint(self):
        """
        An endpoint description Twisted cannot parse is a usage error.
        """
        e = self.assertRaises(usage.UsageError, self.parse, "--port", "tcpx:1")
        self.assertIn("--port", str(e))
        self.assertIn("tcpx:1", str(e))

    def test_help_lists_defaults(self):
        """
        --help shows each option with its default.
        """
        text = str(Options())
        for setting in config.SETTINGS:
            self.assertIn(f"--{setting.name}" if setting.kind == config.FLAG else f"--{setting.name}=", text)
        self.assertIn("[default: 5]", text)
        self.assertIn("[default: tcp:4999]", text)

    def test_example_config_file_is_valid(self):
        """
        conf/origdst.conf, the shipped example, parses.
        """
        self.assertIsInstance(self.parse("--config", CONF), config.Settings)
        # Uncommented, its example lines name every setting and all parse.
        with open(CONF) as f:
            lines = [re.sub(r"^# ([a-z-]+ =)", r"\1", line) for line in f]
        uncommented = self.write("".join(lines))
        self.assertEqual(set(config.read_file(uncommented)), set(config.OPTIONS))


CONF = os.path.join(os.path.dirname(__file__), "..", "conf", "origdst.conf")
README = os.path.join(os.path.dirname(__file__), "..", "README.rst")


def conf_defaults(path):
    """
    @return: C{(key, value)} for each commented-out setting line
        (C{# key = value}) of a config file, in order.
    """
    with open(path) as f:
        return re.findall(r"(?m)^# ([a-z][a-z0-9-]*) =(?: (.*))?$", f.read())


def readme_options(path):
    """
    @return: C{(option names, default)} for each row of the README's option
        table (the simple table whose header is C{option default meaning}).
    """
    with open(path) as f:
        lines = f.read().splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.split() == ["option", "default", "meaning"]
    )
    border = lines[start - 1]
    columns = [m.span() for m in re.finditer(r"=+", border)]
    rows = []
    for line in lines[start + 2 :]:
        if line == border:
            return rows
        first = line[: columns[0][1]].strip()
        if first:
            names = re.findall(r"``--([a-z][a-z0-9-]*)``", first)
            rows.append((names, line[columns[1][0] : columns[1][1]].strip()))
    raise AssertionError("the README's option table has no closing border")


class DocumentationTests(unittest.TestCase):
    """
    The shipped config file and the README's option table say what
    L{config.SETTINGS} says.
    """

    def test_conf_lists_every_setting_with_its_default(self):
        """
        conf/origdst.conf shows each setting once, in a commented-out line
        whose value is the table's default, spelt the same way.
        """
        found = conf_defaults(CONF)
        self.assertEqual(sorted(key for key, _ in found), sorted(config.OPTIONS))
        for key, value in found:
            self.assertEqual((key, value), (key, config.OPTIONS[key].default))

    def test_readme_table_lists_every_option_with_its_default(self):
        """
        The README's option table has a row for each setting (and --config),
        showing the default as --help does.
        """
        rows = readme_options(README)
        names = [name for row_names, _ in rows for name in row_names]
        self.assertEqual(sorted(names), sorted(list(config.OPTIONS) + ["config"]))
        for row_names, shown in rows:
            for name in row_names:
                expected = "(none)" if name == "config" else config.default(name)
                self.assertEqual((name, shown), (name, expected))

    def test_parsers_of_the_checks(self):
        """
        The two readers above find what they look for, and notice a wrong
        default or a missing setting.
        """
        conf = self.mktemp()
        with open(conf, "w") as f:
            f.write("# port = 4999\n#     allow = 10.0.0.0/8\n# allow =\n[origdst]\n")
        self.assertEqual(conf_defaults(conf), [("port", "4999"), ("allow", "")])
        readme = self.mktemp()
        with open(readme, "w") as f:
            f.write(
                "================  =======  =======\n"
                "option            default  meaning\n"
                "================  =======  =======\n"
                "``--port``        5        where\n"
                "                           more\n"
                "``--a``, ``--b``  off      x\n"
                "================  =======  =======\n"
                "\n"
                "``--c``  4\n"
            )
        self.assertEqual(readme_options(readme), [(["port"], "5"), (["a", "b"], "off")])
