"""
A throwaway certificate authority for TLS tests and the demo: it issues
server certificates (cryptography, imported only when one is made, so that
importing the test bed still needs only the standard library).
"""

import datetime
import ipaddress
import os


class Authority:
    """
    A throwaway certificate authority that issues server certificates.

    @ivar pem: its own certificate, PEM.
    """

    def __init__(self, name="origdst test CA"):
        from cryptography.hazmat.primitives.asymmetric import ec

        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = self._build(name, self.key, ca=True)
        self.pem = self._pem(self.cert)

    @staticmethod
    def _pem(cert):
        from cryptography.hazmat.primitives import serialization

        return cert.public_bytes(serialization.Encoding.PEM)

    def _build(self, subject, key, ca=False, names=(), ips=(), expired=False):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.timezone.utc)
        if expired:
            now -= datetime.timedelta(days=3)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issue(self, names=(), ips=(), expired=False):
        """
        @return: C{(certificate PEM, key PEM)} of a server certificate for
            C{names} (DNS) and C{ips}, signed by this authority; C{expired}:
            its validity ended two days ago.
        """
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        subject = (list(names) + list(ips) + ["server"])[0]
        cert = self._build(subject, key, names=names, ips=ips, expired=expired)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return self._pem(cert), key_pem

    def write(self, path, content=None):
        """
        Write this authority's certificate (or C{content}) to C{path}, mode
        644; @return: C{path}.
        """
        with open(path, "wb") as f:
            f.write(self.pem if content is None else content)
        os.chmod(path, 0o644)
        return path
