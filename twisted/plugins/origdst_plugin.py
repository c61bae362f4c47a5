from twisted.application.service import ServiceMaker


class _OrigdstMaker(ServiceMaker):
    @property
    def makeService(self):
        make = ServiceMaker.makeService.fget(self)

        def makeService(options):
            # Under PyPy: start again with origdst's nursery
            # (origdst.nursery) before anything is set up.
            from origdst import nursery

            nursery.restart()
            return make(options)

        return makeService


origdst = _OrigdstMaker(
    "origdst",
    "origdst.tap",
    "Transparent proxy to the original destination of redirected connections.",
    "origdst",
)
