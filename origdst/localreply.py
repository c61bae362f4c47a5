"""
The proxy's own answers on a client connection: a local reply counted,
written, logged, and the connection closed.

L{LocalReplies} is mixed into L{origdst.downstream.ProxyChannel}; the reply
itself (status, body, Envoy flag and details) comes from the catalogue in
L{origdst.replies}, and a request that cannot be parsed is turned into one
by L{origdst.admission.rejection}.
"""

from origdst.admission import rejection
from origdst.exchange import RESPONDING
from origdst.logs import logger

# The HTTP data path's log namespace, as before it had several modules.
log = logger("origdst.http")


class LocalReplies:
    """
    Local replies for a client connection: what it uses of the channel is
    C{exchange}, C{cluster}, C{transport}, C{reactor}, C{server},
    C{access_log}, C{peer}, C{tag} and C{close}.
    """

    def reject(self, error):
        """
        Answer a request that cannot be handled (an L{origdst.framing.BadMessage}),
        and close: after a framing error nothing on the connection can be
        trusted.
        """
        refused = rejection(error, self.peer)
        log.info("{tag} {note}", tag=self.tag, note=refused.note)
        self.local_reply(refused.reply)

    def local_reply(self, reply, extra=b"", method=b"GET"):
        """
        Answer the client from the proxy itself with C{reply}, an
        L{origdst.replies.Reply}, and close.
        """
        exchange = self.exchange
        if exchange is not None and exchange.state is RESPONDING:
            # Too late for a reply: a response is under way (a request body went
            # bad while it streamed): cut the connection, as Envoy resets the stream.
            exchange.log_ending(reply.ending(exchange.retried))
            self.close()
            return
        stats = self.cluster.stats
        if exchange is None:
            # A request refused before it became an exchange counts here.
            stats.downstream_rq_total += 1
        stats.downstream_rq_xx[reply.status // 100] += 1
        stats.responded(exchange.started if exchange is not None else None, None, self.reactor.seconds())
        if reply.status == 508:
            stats.redirect_loop += 1
        self.transport.write(reply.render(self.server, extra, True, method == b"HEAD"))
        if self.access_log is not None:
            self.access_log.local_reply(self, reply, method)
        self.close()
