"""OpenRTB no-bid reason codes: 2.5 section 5.24, and the list 2.6 defers to ("No-Bid Reason
Codes", the AdCOM/OpenRTB 3.0 list, which adds 11-17). 500 and up are exchange-specific; the
fleet sends none of those.

The fleet answers a no-bid with HTTP 204 and no body, as the spec prefers. The code travels in
the ``x-openrtb-nbr`` response header, and the fleet's own finer reason (``no_eligible_bid``,
``deadline``, ...) in ``x-fleet-reason`` (the table in ``docs/ingress.md``). A 400 carries a
JSON body with ``error`` and ``nbr`` (2).
"""

from enum import IntEnum


class NBR(IntEnum):
    UNKNOWN = 0  # "Unknown Error": also the code for "nothing of ours fits" (the list has none)
    TECHNICAL_ERROR = 1
    INVALID_REQUEST = 2
    KNOWN_WEB_SPIDER = 3
    SUSPECTED_NON_HUMAN = 4
    DATACENTER_IP = 5  # Cloud, Data Center, or Proxy IP
    UNSUPPORTED_DEVICE = 6
    BLOCKED_PUBLISHER = 7  # Blocked Publisher or Site
    UNMATCHED_USER = 8
    DAILY_READER_CAP = 9  # Daily User Cap Met
    DAILY_DOMAIN_CAP = 10
    ADS_TXT_UNAVAILABLE = 11  # Ads.txt Authorization Unavailable
    ADS_TXT_VIOLATION = 12
    ADS_CERT_UNAVAILABLE = 13
    ADS_CERT_VIOLATION = 14
    INSUFFICIENT_AUCTION_TIME = 15
    INCOMPLETE_SUPPLY_CHAIN = 16
    BLOCKED_SUPPLY_CHAIN_NODE = 17

