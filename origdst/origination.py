"""
TLS origination: plain HTTP from the client, TLS to the server.

A request redirected from a port of C{--originate-tls} goes upstream over TLS
(pyOpenSSL, through Twisted's L{optionsForClientTLS}), the server's
certificate verified with service-identity against the request's C{Host}
without its port (L{origdst.addresses.server_name}), which is also its SNI.
The trusted CAs are those of C{--ca-file}, or the system's
(L{platformTrust}). The cluster keeps one pool per destination I{and} name,
so a connection verified for one name never carries a request for another.

A connection joins its pool only once its handshake is complete, so no byte
of a request is sent before the server was verified. A handshake that fails
is a failed connect attempt: its request is answered with a 503 whose body
says why (L{explain}: the name that did not match, the chain error), counted
as Envoy's C{ssl.connection_error}, and never sent anywhere else. A
handshake that takes longer than the connect timeout is a connect timeout.

C{X-Forwarded-Proto} stays what the client spoke (C{http}): Envoy sets it
from the downstream connection, whatever the upstream one is.
"""

import json
import ssl as stdlib_ssl

from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet import ssl
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.protocols import tls
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from origdst import replies
from origdst.addresses import endpoint
from origdst.flow import Pauser
from origdst.logs import logger
from origdst.readers import parse_ports, pem_certificates
from origdst.upstream import UpstreamFactory, UpstreamProtocol

log = logger("origdst.origination")

# How many of a certificate's names a reply lists.
SHOWN_NAMES = 4


class Origination:
    """
    Which destination ports are originated, and the CAs trusted there.

    @ivar ports: the destination ports of C{--originate-tls}.
    """

    def __init__(self, settings, reactor):
        self.ports = parse_ports(settings.originate_tls) if settings.originate_tls else frozenset()
        self.reactor = reactor
        self.timeout = settings.connect_timeout
        self.ca_file = settings.ca_file
        self._trust = None
        self._store = None

    def trust(self):
        """
        @return: the trust root handed to L{optionsForClientTLS}, read once.
        """
        if self._trust is None:
            if self.ca_file:
                self._trust = ssl.trustRootFromCertificates(
                    [ssl.Certificate.loadPEM(pem) for pem in pem_certificates(self.ca_file)]
                )
            else:
                self._trust = ssl.platformTrust()
        return self._trust

    def store(self):
        """
        @return: the same CAs as an L{crypto.X509Store}, to find out why a
            chain was refused (pyOpenSSL does not say).
        """
        if self._store is None:
            store = crypto.X509Store()
            if self.ca_file:
                for pem in pem_certificates(self.ca_file):
                    store.add_cert(crypto.load_certificate(crypto.FILETYPE_PEM, pem))
            else:
                paths = stdlib_ssl.get_default_verify_paths()
                try:
                    store.load_locations(paths.cafile, paths.capath)
                except crypto.Error:
                    pass
            self._store = store
        return self._store

    def originate(self, pool, name):
        """
        Make C{pool}'s connections TLS ones, verified for C{name}.
        """
        creator = _Recording(ssl.optionsForClientTLS(name, trustRoot=self.trust()))
        factory = tls_factory(creator, True, TLSUpstreamFactory(pool, name, self), self.reactor)
        factory.noisy = False
        pool.factory = factory


# Twisted 22.8 and later gather small TLS writes; before, no such class.
_TLSTransport = getattr(tls, "BufferingTLSTransport", tls.TLSMemoryBIOProtocol)


class TLSTransport(_TLSTransport):
    """
    Twisted's TLS transport, which also says which producer is registered
    on it as a TCP transport does (C{producer}): L{origdst.flow} reads that
    to undo its flow control, and Twisted's TLS transport would answer with
    the TCP transport's, a wrapper of its own.
    """

    producer = None

    def registerProducer(self, producer, streaming):
        _TLSTransport.registerProducer(self, producer, streaming)
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None
        _TLSTransport.unregisterProducer(self)


def tls_factory(creator, client, wrapped, clock):
    """
    @return: a L{TLSMemoryBIOFactory} of L{TLSTransport}s whose small writes
        are gathered on C{clock} (the pool's reactor: a test's clock too),
        not on the global reactor; Twisted before 22.8 takes no clock and
        gathers none.
    """
    try:
        factory = TLSMemoryBIOFactory(creator, client, wrapped, clock=clock)
    except TypeError:
        factory = TLSMemoryBIOFactory(creator, client, wrapped)
    factory.protocol = TLSTransport
    return factory


@implementer(IOpenSSLClientConnectionCreator)
class _Recording:
    """
    Twisted's connection creator, which also hands each new
    L{SSL.Connection} to its protocol, to read the server's certificates from
    after a failed handshake.
    """

    def __init__(self, creator):
        self.creator = creator

    def clientConnectionForTLS(self, tls_protocol):
        connection = self.creator.clientConnectionForTLS(tls_protocol)
        tls_protocol.wrappedProtocol.tls_connection = connection
        return connection


@implementer(IHandshakeListener)
class TLSUpstreamProtocol(UpstreamProtocol):
    """
    An upstream connection over TLS: it joins its pool when the handshake is
    complete, and a handshake that fails is a failed connect attempt.
    """

    tls_connection = None
    handshaken = False
    _timer = None
    _timed_out = False

    def __init__(self, pool, name, origination):
        UpstreamProtocol.__init__(self, pool)
        self.name = name
        self.origination = origination

    def connectionMade(self):
        self.pauser = Pauser(self.transport)
        # Known at once, not after the handshake: a ClientHello of the
        # proxy's own that loops back to it is recognised as the proxy's.
        self.local_address = endpoint(self.transport.getHost())
        self.pool.own_addresses.add(self.local_address)
        origination = self.origination
        self._timer = origination.reactor.callLater(origination.timeout, self._handshake_timeout)

    def _handshake_timeout(self):
        self._timer = None
        self._timed_out = True
        self.transport.abortConnection()

    def handshakeCompleted(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.handshaken = True
        self.tls_connection = None
        self.pool.stats.ssl_handshake += 1
        self.pool.connection_made(self)

    def connectionLost(self, reason):
        if self.handshaken:
            UpstreamProtocol.connectionLost(self, reason)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.reusable = False
        self.pool.own_addresses.discard(self.local_address)
        connection, self.tls_connection = self.tls_connection, None
        if self._timed_out:
            self.pool.connection_failed(Failure(ConnectTimeoutError()))
            return
        stats = self.pool.stats
        stats.ssl_connection_error += 1
        if reason.check(VerificationError):
            stats.ssl_fail_verify_san += 1
            reply = replies.TLS_VERIFY_FAILED
        elif _verify_failed(reason):
            stats.ssl_fail_verify_error += 1
            reply = replies.TLS_VERIFY_FAILED
        else:
            reply = replies.TLS_HANDSHAKE_FAILED
        try:
            reply = explain(reason, connection, self.name, self.origination)
        except Exception:
            # The pool must hear of the failure whatever the certificate
            # held: the reply then only says what kind of failure it was.
            log.failure("Explaining a failed TLS handshake with {name} failed.", name=self.name)
        self.pool.connection_failed(reason, reply)


class TLSUpstreamFactory(UpstreamFactory):
    """
    Builds a pool's TLS connections (wrapped by a L{TLSMemoryBIOFactory}).
    """

    def __init__(self, pool, name, origination):
        UpstreamFactory.__init__(self, pool)
        self.name = name
        self.origination = origination

    def buildProtocol(self, addr):
        return TLSUpstreamProtocol(self.pool, self.name, self.origination)


def _errors(reason):
    """
    @return: the reason strings of an L{SSL.Error}'s OpenSSL error queue.
    """
    out = []
    for entry in reason.value.args[0] if reason.value.args else ():
        if isinstance(entry, tuple) and entry:
            out.append(str(entry[-1]))
        else:
            out.append(str(entry))
    return out


def _verify_failed(reason):
    return reason.check(SSL.Error) is not None and "certificate verify failed" in _errors(reason)


def _quote(text):
    # JSON's quoting: ASCII, with quotes and control characters escaped.
    return json.dumps(text)


def certificate_names(cert):
    """
    @param cert: a L{crypto.X509}.
    @return: its DNS names and IP addresses (its common name when it has
        none), quoted, for a reply.
    """
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = cert.to_cryptography()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName) + [
            str(ip) for ip in san.get_values_for_type(x509.IPAddress)
        ]
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if not names:
        return "no name"
    shown = ", ".join(_quote(str(n)) for n in names[:SHOWN_NAMES])
    if len(names) > SHOWN_NAMES:
        shown += " and %d more" % (len(names) - SHOWN_NAMES)
    return shown


def _chain(connection):
    if connection is None:
        return []
    try:
        return connection.get_peer_cert_chain() or []
    except SSL.Error:
        return []


def explain(reason, connection, name, origination):
    """
    @param reason: the L{Failure} a handshake ended with.
    @param connection: its L{SSL.Connection}, or C{None}.
    @param name: the name the certificate was verified against.
    @return: the L{origdst.replies.Reply} that says why it failed.
    """
    chain = _chain(connection)
    if reason.check(VerificationError):
        names = certificate_names(chain[0]) if chain else "not known"
        return replies.tls_failure(
            "certificate verify failed",
            "name mismatch: wanted %s, certificate is for %s" % (_quote(name), names),
        )
    if _verify_failed(reason):
        if not chain:
            return replies.tls_failure("certificate verify failed", "no certificate")
        leaf = chain[0]
        try:
            crypto.X509StoreContext(origination.store(), leaf, chain[1:]).verify_certificate()
            why = "refused"
        except crypto.X509StoreContextError as e:
            why = str(e)
        issuer = leaf.to_cryptography().issuer.rfc4514_string()
        return replies.tls_failure(
            "certificate verify failed",
            "%s (certificate for %s, issued by %s)" % (why, certificate_names(leaf), _quote(issuer)),
        )
    if reason.check(SSL.Error):
        why = "; ".join(e for e in _errors(reason) if e) or "unknown error"
    else:
        why = "connection lost: " + reason.getErrorMessage()
    return replies.tls_failure("handshake failed", why)
