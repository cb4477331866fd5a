"""The privacy decision: what a request lets the fleet do with its user. One definition, made
once per request at admission and carried on the admitted request (``Admitted.privacy``).

Three outcomes, from the signals in this order (the first that restricts decides):

- COPPA (``regs.coppa``): contextual.
- GDPR (``regs.gdpr``, 2.5 ``regs.ext.gdpr``, or GPP section 2 in ``regs.gpp_sid``): the TC
  string (``user.consent``, 2.5 ``user.ext.consent``, or GPP's TCF EU section) decoded
  (``fleet.openrtb.consent``) for our vendor id. Our vendor consented and purposes 1, 3, 4
  consented: personalised. Else our vendor consented or has legitimate interest, purpose 1
  consented and purposes 2 and 7 by consent or legitimate interest: contextual with measurement
  (``tcf_measurement_only``: no segments or profile, the user id kept for frequency caps and
  exposure counts). Else contextual. No string, or one that does not decode: no consent.
- US: GPP's US National section (7) with an opt-out of sale, sharing or targeted advertising,
  GPP's US privacy section (6), or ``regs.us_privacy`` (2.5 ``regs.ext.us_privacy``) with the
  opt-out of sale: contextual. A string that applies but does not decode: contextual too.
- LMT or DNT on the device: contextual.

The parameters (our vendor id, the purposes per level) are ``PrivacySettings`` in
``regions.yaml``. The decision is a reason string ('' when personalised) so every stage and
counter reads one plain value; ``measured`` says whether a reason still allows measurement.
"""

from __future__ import annotations

from fleet.config import PrivacySettings
from fleet.openrtb import consent
from fleet.openrtb.model import BidRequest

PERSONALISED = ""
MEASUREMENT_ONLY = "tcf_measurement_only"  # the one contextual reason that keeps measurement
DEFAULT = PrivacySettings()


def measured(reason: str) -> bool:
    """Whether the user id may still be used for frequency caps and exposure counts."""
    return reason == PERSONALISED or reason == MEASUREMENT_ONLY


def tcf_reason(string: str | None, settings: PrivacySettings = DEFAULT) -> str:
    """The decision GDPR leaves, from the TC string (None or '': no string)."""
    if not string:
        return "gdpr_no_consent"
    tc = consent.tcf(string, settings.vendor_id)
    if tc is None:
        return "tcf_undecodable"
    if tc.vendor and settings.personalised_purposes <= tc.purposes:
        return PERSONALISED
    if tc.vendor or tc.vendor_li:
        li = tc.li_purposes if tc.vendor_li else frozenset()
        if all(p in tc.purposes or (p != 1 and p in li) for p in settings.measurement_purposes):
            return MEASUREMENT_ONLY  # purpose 1 cannot rest on legitimate interest
        return "tcf_no_purpose_consent"
    return "tcf_no_vendor_consent"


def decide(req: BidRequest, settings: PrivacySettings = DEFAULT) -> str:
    """Why user-level data is off limits for this request, or '' when it is allowed."""
    regs, user = req.regs, req.user
    reason = PERSONALISED
    if regs is not None:
        if regs.coppa == 1:
            return "coppa"
        sections: dict[int, str] | None = None
        sids = regs.gpp_sid or ()
        if regs.gpp and sids:
            sections = consent.gpp(regs.gpp)
            if sections is None:
                return "gpp_undecodable"
        gdpr = regs.gdpr if regs.gdpr is not None else (regs.ext.gdpr if regs.ext else None)
        if gdpr == 1 or consent.GPP_TCF_EU in sids:
            string = None
            if user is not None:
                string = user.consent or (user.ext.consent if user.ext else None)
            if not string and sections is not None:
                string = sections.get(consent.GPP_TCF_EU)
            reason = tcf_reason(string, settings)
            if not measured(reason):
                return reason
        if consent.GPP_US_NATIONAL in sids and sections is not None:
            nat = consent.us_national(sections.get(consent.GPP_US_NATIONAL, ""))
            if nat is None:
                return "gpp_undecodable"
            if nat.opted_out:
                return "gpp_us_opt_out"
        usp = regs.us_privacy or (regs.ext.us_privacy if regs.ext else None)
        if consent.GPP_USP in sids and sections is not None:
            usp = sections.get(consent.GPP_USP) or usp
        if usp:
            sale = consent.us_privacy(usp)
            if sale is None:
                return "usp_undecodable"
            if sale:
                return "usp_opt_out"
    dev = req.device
    if dev is not None and (dev.lmt == 1 or dev.dnt == 1):
        return "lmt" if dev.lmt == 1 else "dnt"
    return reason
