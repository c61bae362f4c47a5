"""
Tests for L{origdst.replies}: the catalogue of local replies.
"""

from twisted.trial import unittest

from origdst import replies


class CatalogueTests(unittest.TestCase):
    def test_every_reply_named(self):
        """
        Every reply in the catalogue is an error status with a body, a flag
        and details of its own.
        """
        details = [reply.details for reply in replies.CATALOGUE]
        self.assertEqual(len(set(details)), len(details))
        for reply in replies.CATALOGUE:
            self.assertTrue(400 <= reply.status < 600, reply)
            self.assertTrue(reply.body and reply.flags and reply.details, reply)

    def test_upstream_resets(self):
        """
        A reply caused by the upstream is Envoy's reset text with its reason,
        and names the reason in its details.
        """
        self.assertEqual(
            replies.CONNECT_TIMEOUT.body,
            b"upstream connect error or disconnect/reset before headers. "
            b"reset reason: connection timeout",
        )
        self.assertEqual(
            replies.CONNECT_TIMEOUT.details,
            "upstream_reset_before_response_started{connection_timeout}",
        )
        self.assertEqual(replies.PROTOCOL_ERROR.status, 502)
        self.assertEqual(
            [r for r in replies.CATALOGUE if r.overloaded], [replies.OVERFLOW]
        )

    def test_retry_limit(self):
        """
        After a retry, a connect failure or termination also says the retry
        limit was reached (URX); other flags do not change.
        """
        self.assertEqual(replies.CONNECT_FAILURE.ending(retried=True)[0], "UF,URX")
        self.assertEqual(replies.CONNECTION_TERMINATION.ending(retried=True)[0], "UC,URX")
        self.assertEqual(replies.PROTOCOL_ERROR.ending(retried=True)[0], "UPE")
        self.assertEqual(replies.CONNECT_FAILURE.ending()[0], "UF")

    def test_refused(self):
        """
        A refused request's reply is its status's reason phrase, flagged DPE,
        with what was wrong in the details.
        """
        reply = replies.refused(431, "too many request headers")
        self.assertEqual(
            (reply.status, reply.body, reply.flags, reply.details),
            (431, b"Request Header Fields Too Large", "DPE", "http1.too_many_request_headers"),
        )

    def test_render(self):
        """
        A reply is plain text with its length and the server name; a HEAD
        gets the head alone.
        """
        reply = replies.STREAM_TIMEOUT
        self.assertEqual(
            reply.render(b"origdst", b"x: y\r\n"),
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 14\r\ncontent-type: text/plain\r\n"
            b"server: origdst\r\nx: y\r\nconnection: close\r\n\r\nstream timeout",
        )
        self.assertTrue(reply.render(b"s", head_only=True).endswith(b"\r\n\r\n"))
