"""
Tests for L{origdst.tls}: reading a ClientHello without terminating TLS.

A real hello comes from OpenSSL itself (pyOpenSSL on memory BIOs); the
malformed ones are built field by field by L{hello}.
"""

import struct

from OpenSSL import SSL
from twisted.trial import unittest

from origdst import tls


def openssl_hello(server_name=b"backend.example.test", alpn=(b"h2", b"http/1.1")):
    """
    @return: the bytes OpenSSL sends first as a client: its ClientHello.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if alpn:
        context.set_alpn_protos(list(alpn))
    connection = SSL.Connection(context, None)
    if server_name:
        connection.set_tlsext_host_name(server_name)
    connection.set_connect_state()
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass
    return connection.bio_read(65536)


def u16(n):
    return struct.pack("!H", n)


def extension(kind, data):
    return u16(kind) + u16(len(data)) + data


def sni(name, kind=0):
    entry = bytes([kind]) + u16(len(name)) + name
    return extension(0, u16(len(entry)) + entry)


def alpn(*names):
    entries = b"".join(bytes([len(n)]) + n for n in names)
    return extension(16, u16(len(entries)) + entries)


def records(handshake, size=16384, version=b"\x03\x01"):
    """
    @return: C{handshake} in TLS records of at most C{size} bytes each.
    """
    out = b""
    for i in range(0, len(handshake), size):
        fragment = handshake[i : i + size]
        out += b"\x16" + version + u16(len(fragment)) + fragment
    return out


def hello(extensions=b"", suites=b"\x13\x01\x13\x02", session=b"", version=b"\x03\x03",
          compression=b"\x01\x00", kind=1, size=16384):
    """
    @param extensions: the extension bytes, or C{None} for no extensions
        block at all.
    """
    body = version + b"\x00" * 32 + bytes([len(session)]) + session
    body += u16(len(suites)) + suites + compression
    if extensions is not None:
        body += u16(len(extensions)) + extensions
    return records(bytes([kind]) + len(body).to_bytes(3, "big") + body, size)


class RealHelloTests(unittest.TestCase):
    """
    OpenSSL's own ClientHello.
    """

    def test_server_name_and_alpn(self):
        """
        The server name (lowercased) and the ALPN protocols, in order.
        """
        parsed = tls.parse(openssl_hello(b"Backend.Example.TEST"))
        self.assertEqual(parsed.server_name, "backend.example.test")
        self.assertEqual(parsed.alpn, ("h2", "http/1.1"))

    def test_no_server_name(self):
        """
        A hello without SNI or ALPN has neither.
        """
        parsed = tls.parse(openssl_hello(None, ()))
        self.assertIsNone(parsed.server_name)
        self.assertEqual(parsed.alpn, ())

    def test_every_prefix_needs_more(self):
        """
        Each proper prefix is a correct beginning: more is needed, nothing is
        malformed.
        """
        raw = openssl_hello()
        for n in range(len(raw)):
            self.assertRaises(tls.NeedMore, tls.parse, raw[:n])

    def test_one_byte_at_a_time(self):
        """
        Fed one byte at a time, the reader has the hello at its last byte,
        and kept every byte.
        """
        raw = openssl_hello()
        reader = tls.HelloReader()
        results = [reader.feed(raw[i : i + 1]) for i in range(len(raw))]
        self.assertEqual(results[:-1], [None] * (len(raw) - 1))
        self.assertEqual(results[-1].server_name, "backend.example.test")
        self.assertEqual(reader.raw, raw)

    def test_several_records(self):
        """
        A hello split over several TLS records is joined.
        """
        raw = openssl_hello()
        handshake = raw[5:]
        parsed = tls.parse(records(handshake, size=100))
        self.assertEqual(parsed.server_name, "backend.example.test")

    def test_early_data_after_hello(self):
        """
        Records after the hello (TLS 1.3 early data) are not looked at.
        """
        raw = openssl_hello() + b"\x17\x03\x03\x00\x05hello"
        self.assertEqual(tls.parse(raw).server_name, "backend.example.test")


class BuiltHelloTests(unittest.TestCase):
    """
    Hellos built field by field.
    """

    def test_minimal(self):
        """
        A hello with no extensions block at all is valid: no SNI, no ALPN.
        """
        parsed = tls.parse(hello(extensions=None))
        self.assertIsNone(parsed.server_name)

    def test_built(self):
        """
        The builder's SNI and ALPN read back.
        """
        parsed = tls.parse(hello(sni(b"a.example.com") + alpn(b"h2")))
        self.assertEqual((parsed.server_name, parsed.alpn), ("a.example.com", ("h2",)))

    def assertMalformed(self, raw, fragment):
        e = self.assertRaises(tls.Malformed, tls.parse, raw)
        self.assertIn(fragment, str(e))

    def test_malformed(self):
        """
        Each violation is named.
        """
        cases = [
            (hello(kind=2), "type 2"),
            (hello(suites=b""), "cipher suites is shorter"),
            (hello(suites=b"\x13\x01\x13"), "odd length"),
            (hello(session=b"x" * 33), "longer than 32"),
            (hello(compression=b"\x00"), "compression methods is shorter"),
            (hello(version=b"\x02\x00"), "not TLS"),
            (hello(sni(b"a.example.com") + sni(b"b.example.com")), "twice"),
            (hello(sni(b"caf\xc3\xa9.example")), "not ASCII"),
            (hello(sni(b"example.com.")), "not a host name"),
            (hello(sni(b"a b")), "not a host name"),
            (hello(alpn()), "ALPN protocol list is shorter"),
            (hello(extension(0, b"\x00\x10\x00")), "runs past"),
            (b"\x17\x03\x03\x00\x05hello", "record of type 23"),
            (b"\x16\x02\x00\x00\x05hello", "not TLS"),
            (b"\x16\x03\x01\x00\x00", "record length 0"),
            (records(b"\x01\x00\x40\x00" + b"\x03\x03"), "bound"),
        ]
        for raw, fragment in cases:
            self.assertMalformed(raw, fragment)

    def test_extension_length_past_hello(self):
        """
        An extensions block longer than the hello declares is malformed, not
        a wait for more.
        """
        raw = bytearray(hello(sni(b"a.example.com")))
        # The extensions length sits right after the compression methods.
        at = 5 + 4 + 2 + 32 + 1 + 2 + 4 + 2
        raw[at : at + 2] = u16(0x4000)
        self.assertMalformed(bytes(raw), "runs past")

    def test_hostile_corpus_garbage(self):
        """
        The hostile corpus's TLS-looking garbage (no cipher suites) is
        malformed as soon as its first segment is there.
        """
        raw = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 35
        self.assertEqual(tls.HelloReader().feed(raw[:4]), None)
        self.assertRaises(tls.Malformed, tls.HelloReader().feed, raw)

    def test_bound(self):
        """
        The reader gives up on bytes that never complete a hello within its
        bound.
        """
        reader = tls.HelloReader()
        head = b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc\x03\x03"
        self.assertIsNone(reader.feed(head))
        self.assertRaises(tls.Malformed, reader.feed, b"\x00" * (tls.MAX_HELLO + 1000))
