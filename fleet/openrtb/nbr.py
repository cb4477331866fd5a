"""OpenRTB no-bid reason codes (2.5 section 5.24, 2.6 list "No-Bid Reason Codes").

The fleet answers a no-bid with HTTP 204 and no body, as the spec prefers; the reason travels in
the ``x-openrtb-nbr`` response header (and in ``BidResponse.nbr`` when a body is sent) together
with a finer internal reason in ``x-fleet-reason`` so operators can tell why.
"""

from enum import IntEnum


class NBR(IntEnum):
    UNKNOWN = 0
    TECHNICAL_ERROR = 1
    INVALID_REQUEST = 2
    KNOWN_WEB_SPIDER = 3
    SUSPECTED_NON_HUMAN = 4
    DATACENTER_IP = 5
    UNSUPPORTED_DEVICE = 6
    BLOCKED_PUBLISHER = 7
    UNMATCHED_USER = 8
    DAILY_READER_CAP = 9
    DAILY_DOMAIN_CAP = 10
