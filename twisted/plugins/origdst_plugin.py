from twisted.application.service import ServiceMaker

origdst = ServiceMaker(
    "origdst",
    "origdst.tap",
    "Transparent proxy to the original destination of redirected connections.",
    "origdst",
)
