"""Real privacy strings for tests, encoded per the specifications (the decoders only read):
TCF v2 TC strings, GPP strings (header with a Fibonacci range of section ids) and GPP US
National sections. ``python tests/privacy_strings.py`` prints the ones the fixtures carry."""

from __future__ import annotations

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class Writer:
    def __init__(self):
        self.bits: list[str] = []

    def int(self, value: int, width: int) -> "Writer":
        assert 0 <= value < (1 << width), (value, width)
        self.bits.append(format(value, f"0{width}b"))
        return self

    def flags(self, on, width: int) -> "Writer":
        """A bitfield: bit i is id i + 1."""
        self.bits.append("".join("1" if i + 1 in on else "0" for i in range(width)))
        return self

    def letters(self, text: str) -> "Writer":
        for ch in text:
            self.int(ord(ch) - ord("A"), 6)
        return self

    def fibonacci(self, value: int) -> "Writer":
        fibs = [1, 2]
        while fibs[-1] <= value:
            fibs.append(fibs[-1] + fibs[-2])
        out = ["0"] * len(fibs)
        for i in range(len(fibs) - 1, -1, -1):
            if fibs[i] <= value:
                out[i] = "1"
                value -= fibs[i]
        text = "".join(out).rstrip("0")
        self.bits.append(text + "1")
        return self

    def encode(self) -> str:
        bits = "".join(self.bits)
        bits += "0" * (-len(bits) % 8)  # whole bytes, then 6-bit groups
        bits += "0" * (-len(bits) % 6)
        return "".join(_ALPHABET[int(bits[i:i + 6], 2)] for i in range(0, len(bits), 6))


def _vendors(w: Writer, vendors, ranged: bool) -> None:
    top = max(vendors, default=0)
    w.int(top, 16).int(1 if ranged else 0, 1)
    if ranged:  # runs of consecutive ids as ranges, the rest single
        runs: list[list[int]] = []
        for v in sorted(set(vendors)):
            if runs and v == runs[-1][1] + 1:
                runs[-1][1] = v
            else:
                runs.append([v, v])
        w.int(len(runs), 12)
        for lo, hi in runs:
            if lo == hi:
                w.int(0, 1).int(lo, 16)
            else:
                w.int(1, 1).int(lo, 16).int(hi, 16)
    else:
        w.flags(set(vendors), top)


def tc_string(*, vendors=(), purposes=(), li_purposes=(), li_vendors=(), ranged: bool = False,
              restrictions=(), version: int = 2, created_ds: int = 16_000_000_000,
              cmp_id: int = 7, publisher_segment: bool = False) -> str:
    """A TCF v2 TC string (core segment). ``restrictions``: (purpose, type, vendor ids)."""
    w = Writer()
    w.int(version, 6).int(created_ds, 36).int(created_ds, 36).int(cmp_id, 12).int(1, 12)
    w.int(1, 6).letters("EN").int(150, 12).int(4, 6).int(1, 1).int(0, 1)
    w.int(0, 12).flags(set(purposes), 24).flags(set(li_purposes), 24).int(0, 1).letters("DE")
    _vendors(w, vendors, ranged)
    _vendors(w, li_vendors, ranged)
    w.int(len(restrictions), 12)
    for purpose, kind, ids in restrictions:
        w.int(purpose, 6).int(kind, 2).int(len(ids), 12)
        for v in ids:
            w.int(0, 1).int(v, 16)
    return w.encode()


def gpp_string(sections: dict[int, str]) -> str:
    """A GPP string: header (type 3, version 1, section ids as single Fibonacci offsets) + sections."""
    w = Writer().int(3, 6).int(1, 6).int(len(sections), 12)
    last = 0
    for sid in sorted(sections):
        w.int(0, 1).fibonacci(sid - last)
        last = sid
    bits = "".join(w.bits)
    bits += "0" * (-len(bits) % 6)  # GPP pads to 6 bits only
    header = "".join(_ALPHABET[int(bits[i:i + 6], 2)] for i in range(0, len(bits), 6))
    return "~".join([header, *(sections[s] for s in sorted(sections))])


def us_national(*, sale: int = 2, sharing: int = 2, targeted: int = 2, version: int = 1) -> str:
    """A GPP US National core segment (1: opted out, 2: did not, 0: not applicable)."""
    w = Writer().int(version, 6)
    w.int(1, 2).int(1, 2).int(1, 2).int(1, 2).int(1, 2).int(1, 2)  # notices given
    w.int(sale, 2).int(sharing, 2).int(targeted, 2)
    w.bits.append("0" * (2 * 12 + 2 * 2))  # sensitive data, children: not applicable
    w.int(0, 2).int(2, 2).int(0, 2).int(0, 2)  # personal data, MSPA fields
    return w.encode()


OUR_VENDOR = 1234  # regions.yaml defaults.privacy.vendor_id

if __name__ == "__main__":
    full = tc_string(vendors=[OUR_VENDOR, 755], purposes=[1, 2, 3, 4, 7])
    print("personalised", full)
    print("personalised, range-encoded", tc_string(vendors=[OUR_VENDOR], purposes=[1, 2, 3, 4, 7], ranged=True))
    print("measurement only", tc_string(vendors=[OUR_VENDOR], purposes=[1, 2, 7]))
    print("other vendor", tc_string(vendors=[755], purposes=[1, 2, 3, 4, 7]))
    print("gpp tcf", gpp_string({2: full}))
    print("gpp usnat opt-out", gpp_string({7: us_national(sale=1)}))
    print("gpp usnat no opt-out", gpp_string({7: us_national()}))
